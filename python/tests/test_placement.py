"""Workers on their first day: a new worker takes no input before its ``@enter`` returned (a
burst meanwhile goes to the warm worker), a failing ``@enter`` shows on the function's status
at once, an idle app keeps no process, and resource requests reach the manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, wait_for

import hopper


def _attempts(server: Server, call_id: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = server.get(f"/v1/calls/{call_id}/attempts")
    return result


def _epoch(rfc3339: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_a_burst_while_a_new_worker_loads_goes_to_the_warm_worker(
    deploy: Any, server: Server, tmp_path: Path
) -> None:
    entered = tmp_path / "entered"
    entered.mkdir()
    d = deploy(
        f"""
        import os, time
        @app.cls(min_workers=1, max_workers=2)
        class Slow:
            @hopper.enter()
            def load(self):
                time.sleep(5)
                # When @enter returned, by worker.
                with open(os.path.join({str(entered)!r}, os.environ["HOPPER_WORKER_ID"]), "w") as f:
                    f.write(repr(time.time()))

            @hopper.method()
            def go(self, x):
                time.sleep(0.05)  # 40 of them keep one worker busy for 2 s or more
                return {{"worker": os.environ["HOPPER_WORKER_ID"], "x": x}}
        """
    )
    wait_for(lambda: list(entered.iterdir()), timeout=30, what="the warm worker's @enter")
    (warm,) = [p.name for p in entered.iterdir()]
    # 40 calls at once: the provisioner starts a second worker for them.
    spawned = server.post(
        f"/v1/functions/{d.app}.Slow.go/calls/batch", {"calls": [{"input": i} for i in range(40)]}
    )
    calls = [hopper.FunctionCall.from_id(c["id"], client=server.client()) for c in spawned["calls"]]
    outputs = [c.get(timeout=60) for c in calls]
    assert [o["x"] for o in outputs] == list(range(40))
    # The second worker started for the burst was loading for 5 s: the warm one took it all.
    assert {o["worker"] for o in outputs} == {warm}, outputs
    wait_for(lambda: len(list(entered.iterdir())) == 2, timeout=30, what="the second worker's @enter")
    # No input was leased by a worker before its @enter returned.
    ready_at = {p.name: float(p.read_text()) for p in entered.iterdir()}
    for c in calls:
        for a in _attempts(server, c.object_id):
            assert _epoch(a["started_at"]) >= ready_at[a["worker_id"]] - 0.05, a
    # Its start-up time shows on the function.
    view = server.get(f"/v1/functions/{d.app}.Slow.go")
    assert view["startup"]["last_ms"] >= 5000, view
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert f'hopper_worker_startup_seconds_count{{function="{d.app}.Slow.go"}}' in metrics


def test_a_failing_enter_shows_on_the_function_at_once(deploy: Any, server: Server) -> None:
    d = deploy(
        """
        @app.cls(min_workers=1)
        class Warm:
            @hopper.enter()
            def load(self):
                raise ValueError("no model file at /models/x")

            @hopper.method()
            def go(self, x):
                return x

        @app.cls()
        class Cold:
            @hopper.enter()
            def load(self):
                raise KeyError("MODEL_PATH")

            @hopper.method()
            def go(self, x):
                return x
        """
    )

    def failed(name: str) -> str | None:
        startup = server.get(f"/v1/functions/{d.app}.{name}").get("startup") or {}
        return startup.get("failed")

    # Warm: its worker starts with the deploy; nobody called it.
    why = wait_for(lambda: failed("Warm.go"), timeout=20, what="the warm function's status")
    assert why == "ValueError: no model file at /models/x"
    # Cold: no process until the first call, whose input then waits on retries.
    assert failed("Cold.go") is None
    d.fn("Cold.go").spawn(1)
    why = wait_for(lambda: failed("Cold.go"), timeout=20, what="the cold function's status")
    assert why == "KeyError: 'MODEL_PATH'"


def _workers_of(server: Server, app: str) -> list[dict[str, Any]]:
    return [
        w
        for w in server.get("/v1/workers")
        if w["state"] == "active" and any(f.startswith(app + ".") for f in w["functions"])
    ]


def test_an_idle_app_keeps_no_worker_and_its_next_call_starts_one(deploy: Any, server: Server) -> None:
    source = "\n".join(
        f"""
@app.function(scaledown_window="1s")
def f{i}(x):
    return x + {i}
"""
        for i in range(20)
    )
    d = deploy(source)
    time.sleep(2)
    assert _workers_of(server, d.app) == [], "min_workers defaults to 0: nothing starts on deploy"
    assert d.fn("f7").remote(1) == 8
    wait_for(lambda: not _workers_of(server, d.app), timeout=30, what="the idle worker to stop")
    assert d.fn("f7").remote(2) == 9, "the first call after the scale-down starts a worker again"


def test_resource_requests_reach_the_manifest_and_bad_ones_are_refused(deploy: Any, server: Server) -> None:
    d = deploy(
        """
        @app.function(gpu=["H100", "a100:1"], cpu=2.5, memory="8GiB", labels={"zone": "eu"})
        def train(x):
            return x

        @app.function(gpu=1, memory=4096)
        def embed(x):
            return x
        """
    )
    spec = server.get(f"/v1/functions/{d.app}.train")["spec"]["resources"]
    assert spec == {
        "gpu": {"count": 1, "kinds": ["H100", "A100"]},
        "cpu": 2.5,
        "memory_bytes": 8 << 30,
        "labels": {"zone": "eu"},
    }
    spec = server.get(f"/v1/functions/{d.app}.embed")["spec"]["resources"]
    assert spec == {"gpu": {"count": 1}, "memory_bytes": 4096 << 20}
    app = hopper.App("bad-resources")
    bad: list[dict[str, Any]] = [
        {"gpu": 0},
        {"gpu": ""},
        {"cpu": -1},
        {"memory": True},
        {"labels": {"zone": 1}},
        {"labels": ["zone=eu"]},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            app.function(**kwargs)(lambda x: x)
