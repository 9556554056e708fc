"""Functions on a real worker: every decorator option, concurrency, enter/exit, logs per input,
batching, retries, schedules, start-up, and a serve runner killed mid-batch."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, wait_for

import hopper
from hopper import exception as hx


def test_decorator_options_reach_the_server(deploy: Any, server: Server) -> None:
    d = deploy(
        """
        import os
        @app.function(timeout="90s", concurrency=3, min_workers=0, max_workers=3,
                      buffer_workers=1, scaledown_window=120, env={"GREETING": "hi"},
                      retries=hopper.Retries(5, backoff_coefficient=1.5, initial_delay="2s",
                                             max_delay=30))
        def configured(name):
            return f"{os.environ['GREETING']} {name}"

        @app.function(batch=hopper.Batch(max_size=16, wait="25ms"), retries=2,
                      max_containers=2)
        def batched(xs: list[int]) -> list[int]:
            return xs

        @app.function(schedule=hopper.Cron("0 3 * * *", timezone="Europe/Berlin"))
        def nightly() -> None:
            print("nightly")

        @app.function(schedule=hopper.Period(minutes=15))
        def refresh() -> str:
            return "refreshed"

        @app.function(schedule=3600)
        def hourly(day: str = "today") -> str:
            return day
        """
    )
    spec = server.get(f"/v1/functions/{d.app}.configured")["spec"]
    assert spec["timeout_ms"] == 90_000
    assert spec["concurrency"] == 3
    assert spec["env"] == {"GREETING": "hi"}
    assert spec["retries"] == {
        "max_retries": 5,
        "backoff_coefficient": 1.5,
        "initial_delay_ms": 2000,
        "max_delay_ms": 30_000,
    }
    assert spec["scaling"] == {
        "min_workers": 0,
        "max_workers": 3,
        "buffer_workers": 1,
        "scaledown_window_ms": 120_000,
    }
    assert spec["serve"][1:3] == ["-m", "hopper._runner"]
    # Shipped as a snapshot of the app's folder, whose root it runs in.
    assert spec["workdir"] == "/" and spec["snapshot"].startswith("sha256:")
    batched = server.get(f"/v1/functions/{d.app}.batched")["spec"]
    assert batched["batch"] == {"max_size": 16, "wait_ms": 25}
    assert batched["retries"]["max_retries"] == 2
    assert batched["scaling"]["max_workers"] == 2
    schedules = {s["name"]: s for s in server.get("/v1/schedules")}
    assert schedules[f"{d.app}.nightly"]["cron"] == "0 3 * * *"
    assert schedules[f"{d.app}.nightly"]["timezone"] == "Europe/Berlin"
    assert schedules[f"{d.app}.refresh"]["every"] == "15m"
    assert schedules[f"{d.app}.hourly"]["every"] == "1h"
    assert d.fn("configured").remote("you") == "hi you"
    fired = server.post(f"/v1/schedules/{d.app}.refresh/trigger")
    call_id = fired.get("id") or fired.get("call", {}).get("id") or fired.get("call_id")
    assert server.client().call(call_id).get(timeout=30) == "refreshed"


def test_local_calls_the_python_function_in_process(tmp_path: Path) -> None:
    app = hopper.App("local-only")
    try:

        @app.function(retries=2)
        def double(x: int) -> int:
            return x * 2

        assert double.local(21) == 42 and double(4) == 8
        assert double.qualified_name == "local-only.double"
    finally:
        hopper.App._all.remove(app)


def test_a_class_called_locally_enters_once_per_instance() -> None:
    app = hopper.App("local-cls")
    try:

        @app.cls()
        class Model:
            entered = 0

            @hopper.enter()
            def load(self) -> None:
                Model.entered += 1
                self.weights = 10

            @hopper.method()
            def predict(self, x: int) -> int:
                return x * self.weights

            @hopper.method()
            async def apredict(self, x: int) -> int:
                return self.predict(x) + 1

        m = Model()
        assert m.predict(2) == 20 and m.predict(3) == 30
        assert Model.entered == 1
        assert asyncio.run(Model().apredict(1)) == 11
        assert Model.entered == 2  # once per instance

        @app.cls()
        class AsyncLoad:
            @hopper.enter()
            async def load(self) -> None:
                self.weights = 3

            @hopper.method()
            def predict(self, x: int) -> int:
                return x * self.weights

        assert AsyncLoad().predict(2) == 6  # no loop running: @enter is run to its end

        async def in_a_notebook() -> int:
            return AsyncLoad().predict(2)

        with pytest.raises(RuntimeError, match="async @enter method"):
            asyncio.run(in_a_notebook())
    finally:
        hopper.App._all.remove(app)


def test_limits_and_keys_hold_back_a_busy_tenant_not_the_others(deploy: Any, server: Server) -> None:
    d = deploy(
        """
        import time
        @app.function(concurrency=8, priority=2,
                      limits=hopper.Limits(key="tenant", max_running_per_key=1, max_running=4))
        def fetch(tenant, n):
            time.sleep(0.3)
            return [tenant, n]
        """
    )
    spec = server.get(f"/v1/functions/{d.app}.fetch")["spec"]
    assert spec["limits"] == {"key": "/$kwargs/tenant", "max_running": 4, "max_running_per_key": 1}
    assert spec["priority"] == 2
    fetch = d.fn("fetch")
    fetch.remote("warm", 0)
    # acme's six inputs run one at a time; beta's two do not wait for them.
    calls = [fetch.spawn(tenant="acme", n=i) for i in range(6)]
    calls += [fetch.spawn(tenant="beta", n=i) for i in range(2)]
    assert [c.get(timeout=30) for c in calls[6:]] == [["beta", 0], ["beta", 1]]
    assert calls[5].get(timeout=30) == ["acme", 5]
    spans: dict[str, list[tuple[str, str]]] = {}
    for c in calls:
        tenant = c.get(timeout=30)[0]
        (a,) = server.get(f"/v1/calls/{c.object_id}/attempts")
        spans.setdefault(tenant, []).append((a["started_at"], a["finished_at"]))
    for tenant, runs in spans.items():
        runs.sort()
        for (_, end), (start, _) in itertools.pairwise(runs):
            assert start >= end, f"{tenant} ran two at once: {runs}"
    # beta's second input started before acme's last one: the busy key held back nobody.
    assert spans["beta"][1][0] < spans["acme"][5][0]
    # A call's own key and priority come before the function's.
    keyed = fetch.with_options(key="tenant-9", priority=-5).spawn(tenant="acme", n=9)
    info = keyed.info()
    assert (info["key"], info["priority"]) == ("tenant-9", -5)
    assert server.get(f"/v1/calls/{calls[0].object_id}")["priority"] == 2
    for bad in ({"key": ""}, {"key": "k" * 201}, {"priority": 1001}, {"priority": True}, {"key": "a\nb"}):
        with pytest.raises(ValueError):
            fetch.with_options(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_running must be an int"):
        hopper.Limits(max_running=0)
    for rate in ("5/fortnightly!", "5/0s", "5/500ms", "5/25h", "1000001/s", "0/s", 5):
        with pytest.raises(ValueError, match=r"Limits\.rate must be a count"):
            hopper.Limits(rate=rate)  # type: ignore[arg-type]
    assert hopper.Limits(rate_per_key="10 / 5m").rate_per_key == "10 / 5m"
    with pytest.raises(ValueError, match="JSON pointer"):
        hopper.Limits(key="/a~2b")


def test_n_slow_inputs_take_one_inputs_time_with_concurrency_n(deploy: Any) -> None:
    d = deploy(
        """
        import asyncio, time
        @app.function(concurrency=4)
        def sleeper(x):
            time.sleep(1)
            return x

        @app.function(concurrency=10)
        async def async_sleeper(x):
            await asyncio.sleep(1)
            return x
        """
    )
    for name, n in (("sleeper", 4), ("async_sleeper", 10)):
        d.fn(name).remote(-1)  # warm: the process has started
        started = time.monotonic()
        assert list(d.fn(name).map(range(n))) == list(range(n))
        took = time.monotonic() - started
        assert took < 1.9, f"{name}: {n} inputs of 1 s with concurrency {n} took {took:.2f} s"


def test_enter_runs_once_per_process_and_exit_at_shutdown(deploy: Any, tmp_path: Path) -> None:
    log = tmp_path / "enters.txt"
    d = deploy(
        f"""
        import os, time
        @app.cls(concurrency=4, max_workers=2)
        class Model:
            @hopper.enter()
            def load(self):
                with open({str(log)!r}, "a") as f:
                    f.write(f"{{os.getpid()}}\\n")
                self.loads = getattr(self, "loads", 0) + 1
                self.weights = 2

            @hopper.method()
            def predict(self, x: float) -> list:
                time.sleep(0.05)
                return [os.getpid(), self.loads, x * self.weights]
        """
    )
    name = f"{d.app}.Model.predict"
    outs = list(hopper.Function.from_name(name).map(range(40)))
    assert [o[2] for o in outs] == [x * 2 for x in range(40)]
    assert {o[1] for o in outs} == {1}
    pids = log.read_text().split()
    assert len(pids) == len(set(pids))  # enter ran once per process
    assert {str(o[0]) for o in outs} <= set(pids)


def test_prints_land_in_their_own_inputs_log_under_concurrency(deploy: Any, server: Server) -> None:
    d = deploy(
        """
        import logging, time
        print("printed at import")
        @app.function(concurrency=8)
        def chatty(x):
            for i in range(5):
                print(f"x={x} line {i}")
                time.sleep(0.01)
            logging.warning("x=%s via logging", x)
            return x
        """
    )
    assert list(d.fn("chatty").map(range(32))) == list(range(32))
    call = server.get("/v1/calls", function=f"{d.app}.chatty", origin="map", limit=1)["calls"][0]
    for index in range(32):
        lines = server.get(f"/v1/calls/{call['id']}/logs", index=index)["lines"]
        mine = [ln["line"] for ln in lines if re.search(r"x=\d+ ", ln["line"])]
        assert len(mine) == 6, (index, lines)
        assert all(f"x={index} " in text for text in mine), (index, mine)


def test_start_up_output_goes_to_the_workers_log_not_inputs(deploy: Any, server: Server) -> None:
    """Needs the server's `ready` line (start-up output is the worker's, not the inputs')."""
    d = deploy(
        """
        print("printed at import")
        @app.function()
        def quiet(x):
            return x
        """
    )
    call = d.fn("quiet").spawn(1)
    assert call.get(timeout=30) == 1
    lines = [ln["line"] for ln in server.get(f"/v1/calls/{call.object_id}/logs")["lines"]]
    assert "printed at import" not in lines
    assert not any("ready" in line for line in lines)


def test_stderr_lines_keep_their_stream(deploy: Any, server: Server) -> None:
    """Needs log lines with a `stream` in the serve protocol."""
    d = deploy(
        """
        import sys
        @app.function()
        def both(x):
            print("to stdout")
            print("to stderr", file=sys.stderr)
            return x
        """
    )
    call = d.fn("both").spawn(1)
    call.get(timeout=30)
    lines = {ln["line"]: ln["stream"] for ln in server.get(f"/v1/calls/{call.object_id}/logs")["lines"]}
    assert lines["to stdout"] == "stdout"
    assert lines["to stderr"] == "stderr"


def test_batches_return_per_input_results_and_errors(deploy: Any, server: Server) -> None:
    d = deploy(
        """
        @app.function(batch=hopper.Batch(max_size=8, wait="300ms"))
        def embed(texts: list[str]) -> list:
            return [ValueError(f"empty text") if not t else [float(len(t))] for t in texts]
        """
    )
    texts = ["a", "bb", "", "dddd", "e", "ff", "", "h"]
    outs = list(d.fn("embed").map(texts, return_exceptions=True))
    for text, out in zip(texts, outs, strict=True):
        if text:
            assert out == [float(len(text))]
        else:
            assert isinstance(out, hx.InputFailedError) and out.code == "ValueError"
    call = server.get("/v1/calls", function=f"{d.app}.embed", origin="map", limit=1)["calls"][0]
    assert call["inputs"]["succeeded"] == 6 and call["inputs"]["failed"] == 2


def test_attempts_record_their_batch_size(deploy: Any, server: Server) -> None:
    """Needs `batch_size` on attempts."""
    d = deploy(
        """
        @app.function(batch=hopper.Batch(max_size=8, wait="500ms"))
        def ident(xs: list[int]) -> list[int]:
            return xs
        """
    )
    d.fn("ident").remote(0)  # the process is up
    assert list(d.fn("ident").map(range(8))) == list(range(8))
    call = server.get("/v1/calls", function=f"{d.app}.ident", origin="map", limit=1)["calls"][0]
    attempts = server.get(f"/v1/calls/{call['id']}/attempts")
    attempts = attempts["attempts"] if isinstance(attempts, dict) else attempts
    sizes = [a.get("batch_size") for a in attempts]
    assert all(isinstance(s, int) for s in sizes), attempts
    assert max(sizes) > 1


def test_retries_and_no_retry(deploy: Any, tmp_path: Path) -> None:
    """The NoRetry part needs `"retry": false` in error answers."""
    counter = tmp_path / "count"
    d = deploy(
        f"""
        import os
        FAST = hopper.Retries(3, backoff_coefficient=1.0, initial_delay="100ms",
                              max_delay="100ms")

        @app.function(retries=FAST)
        def flaky(key):
            path = {str(counter)!r} + key
            n = int(open(path).read()) if os.path.exists(path) else 0
            open(path, "w").write(str(n + 1))
            if n < 2:
                raise RuntimeError(f"attempt {{n + 1}} fails")
            return n + 1

        @app.function(retries=FAST)
        def hopeless(x):
            raise hopper.NoRetry(ValueError("corrupt upload"))

        @app.function(retries=FAST, no_retry_on=[KeyError])
        def missing(x):
            raise KeyError(x)

        @app.function(retries=FAST, retry_on=[TimeoutError])
        def picky(x):
            raise RuntimeError("not worth retrying")
        """
    )
    call = d.fn("flaky").spawn("a")
    assert call.get(timeout=30) == 3
    assert call.info()["attempts"] == 3
    for name, exc in (("hopeless", ValueError), ("missing", KeyError), ("picky", RuntimeError)):
        call = d.fn(name).spawn(1)
        with pytest.raises(exc):
            call.get(timeout=30)
        assert call.info()["attempts"] == 1, name


def test_min_workers_start_enter_before_the_first_input(deploy: Any, tmp_path: Path) -> None:
    """Needs serve processes started with their worker."""
    marker = tmp_path / "warm"
    deploy(
        f"""
        @app.cls(min_workers=1)
        class Warm:
            @hopper.enter()
            def load(self):
                open({str(marker)!r}, "w").write("loaded")

            @hopper.method()
            def go(self, x):
                return x
        """
    )
    wait_for(marker.exists, timeout=15, what="@enter to run with no input sent")


def test_a_function_calls_another_without_configuration(deploy: Any) -> None:
    """Needs HOPPER_SERVER (and a token) in the serve process's environment."""
    d = deploy(
        """
        import os
        @app.function()
        def inner(x):
            return x + 1

        @app.function()
        def outer(x):
            me = os.environ["HOPPER_FUNCTION"]
            inner = hopper.Function.from_name(me.rsplit(".", 1)[0] + ".inner")
            return sum(inner.map(range(x))) + inner.remote(100)
        """
    )
    assert d.fn("outer").remote(10) == sum(range(1, 11)) + 101


def test_an_import_failure_is_a_start_up_error(deploy: Any) -> None:
    """Needs start-up failures reported as `startup_failed`."""
    d = deploy(
        """
        import os
        if os.environ.get("HOPPER_FUNCTION"):  # set for the serve process, not at deploy
            raise RuntimeError("the config file is missing")

        @app.function()
        def never(x):
            return x
        """
    )
    with pytest.raises(hx.StartupError) as info:
        d.fn("never").spawn(1).get(timeout=30)
    assert "the config file is missing" in info.value.message


def test_killing_the_serve_runner_mid_batch_runs_its_inputs_again(
    deploy: Any, tmp_path: Path, server: Server
) -> None:
    pids = tmp_path / "pids"
    d = deploy(
        f"""
        import os, time
        @app.function(batch=hopper.Batch(max_size=8, wait="200ms"))
        def work(xs: list[int]) -> list[int]:
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            if os.path.getsize({str(pids)!r}) < 12 and len(open({str(pids)!r}).read().split()) == 1:
                time.sleep(30)  # the first batch hangs until it is killed
            return [x * 3 for x in xs]
        """
    )
    call = d.fn("work").spawn(0)
    pid = int(wait_for(lambda: pids.exists() and pids.read_text().split(), what="a batch")[0])
    os.kill(pid, signal.SIGKILL)
    assert call.get(timeout=60) == 0
    assert len(pids.read_text().split()) == 2
    attempts = server.get(f"/v1/calls/{call.object_id}/attempts")
    attempts = attempts["attempts"] if isinstance(attempts, dict) else attempts
    assert len(attempts) >= 2, attempts


def test_cancelling_a_call_stops_its_input_and_frees_the_slot(deploy: Any, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    d = deploy(
        f"""
        import time
        @app.function(concurrency=1, max_workers=1)
        def spin(x):
            if x == "forever":
                try:
                    while True:
                        time.sleep(0.01)
                finally:
                    open({str(marker)!r}, "w").close()
            return x
        """
    )
    assert d.fn("spin").remote("warm") == "warm"
    call = d.fn("spin").spawn("forever")
    time.sleep(1)  # it is running now
    call.cancel()
    with pytest.raises(hx.InputCancelledError):
        call.get(timeout=10)
    # The one slot is free again: without the cancel reaching the process, this input would
    # wait behind the endless one.
    assert d.fn("spin").spawn("next").get(timeout=20) == "next"
    wait_for(marker.exists, what="the cancelled input's finally block")


def test_a_class_method_batches_with_hopper_batched(deploy: Any, server: Server) -> None:
    """@hopper.batched on one method batches that method only; @enter ran once first."""
    d = deploy(
        """
        import os

        @app.cls(concurrency=1)
        class Model:
            @hopper.enter()
            def load(self):
                self.scale = 10

            @hopper.method()
            @hopper.batched(max_batch_size=8, wait_ms=300)
            def embed(self, xs: list[int]) -> list[list[int]]:
                return [[x * self.scale, len(xs)] for x in xs]

            @hopper.method()
            def one(self, x: int) -> int:
                return x * self.scale
        """
    )
    outs = list(d.fn("Model.embed").map(range(8)))
    assert [o[0] for o in outs] == [x * 10 for x in range(8)]
    assert max(o[1] for o in outs) > 1  # inputs came in batches
    assert d.fn("Model.one").remote(4) == 40  # the other method takes one input, not a list
    assert server.get(f"/v1/functions/{d.app}.Model.embed")["spec"]["batch"]["max_size"] == 8
    assert not server.get(f"/v1/functions/{d.app}.Model.one")["spec"].get("batch")


def test_batched_refuses_values_out_of_range() -> None:
    with pytest.raises(ValueError, match="wait_ms"):
        hopper.batched(max_batch_size=4, wait_ms=-1)
    with pytest.raises(ValueError, match="max_size"):
        hopper.batched(max_batch_size=0)


def test_an_input_that_kills_its_process_fails_instead_of_cycling(deploy: Any, server: Server) -> None:
    """A poison input (it makes the process exit, segfault or abort) fails with serve_crashed
    under the function's retries; it used to go back to the queue ten times, restarting the
    process with backoff each time, and fail after about 90 s with lease_lost."""
    d = deploy(
        """
        import os, sys
        @app.function(retries=hopper.Retries(1, initial_delay="100ms"))
        def risky(x: str) -> str:
            if x == "poison":
                print("about to die", file=sys.stderr, flush=True)
                os._exit(3)
            return x
        """
    )
    started = time.monotonic()
    call = d.fn("risky").spawn("poison")
    with pytest.raises(hx.InputFailedError) as info:
        call.get(timeout=60)
    assert time.monotonic() - started < 30
    assert info.value.code == "serve_crashed", info.value
    assert "exit status: 3" in str(info.value) and "while running this input" in str(info.value)
    lines = [entry["line"] for entry in server.get(f"/v1/calls/{call.object_id}/logs")["lines"]]
    assert "about to die" in lines, lines
    attempts = server.get(f"/v1/calls/{call.object_id}/attempts")
    attempts = attempts["attempts"] if isinstance(attempts, dict) else attempts
    assert [a["outcome"] for a in attempts] == ["failed", "failed"]  # one retry, as configured
    assert d.fn("risky").remote("fine") == "fine"  # the next input gets a new process
