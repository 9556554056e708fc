"""The Airflow provider (hopper.airflow) in a real Airflow 3 installation against a real server:
each DAG runs with ``dag.test()`` in a process of its own, its tasks write what they saw to a
JSON file, and the test reads it and asks the server what happened.

Needs Airflow (``pip install "./python[airflow]"``); skipped without it. CI runs it in the
examples' virtualenv (crates/cli/tests/examples_e2e.rs).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Deployed, Server, wait_for

pytest.importorskip("airflow.sdk", reason="Airflow is not installed (pip install './python[airflow]')")

_runs = iter(range(1_000_000))


class DagRun:
    def __init__(self, proc: subprocess.CompletedProcess[str], seen: dict[str, Any]) -> None:
        self.output = proc.stdout + proc.stderr
        self.returncode = proc.returncode
        self.seen = seen

    @property
    def state(self) -> str:
        return str(self.seen.get("__dagrun__", "none"))


@pytest.fixture
def run_dag(airflow_env: dict[str, str], tmp_path: Path) -> Callable[..., Any]:
    """run_dag(body, dag_id=...) writes a DAG file (``body`` defines tasks inside ``with dag:``;
    ``record(key, value)`` stores what a task saw) and runs it with dag.test()."""

    def go(
        body: str,
        dag_id: str | None = None,
        logical_date: str = "2026-01-01T00:00:00+00:00",
        background: bool = False,
    ) -> Any:
        dag_id = dag_id or f"d{next(_runs)}_{os.getpid()}"
        seen_file = tmp_path / f"{dag_id}.json"
        source = DAG_TEMPLATE.format(
            dag_id=dag_id,
            seen=str(seen_file),
            date=logical_date,
            body=textwrap.indent(textwrap.dedent(body), "    "),
        )
        dags = Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"])  # dag.test() runs what the folder holds
        dags.mkdir(exist_ok=True)
        path = dags / f"{dag_id}.py"
        path.write_text(source)
        cmd = [sys.executable, str(path)]
        if background:
            return subprocess.Popen(
                cmd, env=airflow_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = subprocess.run(cmd, env=airflow_env, capture_output=True, text=True, timeout=240)
        seen = json.loads(seen_file.read_text()) if seen_file.exists() else {}
        return DagRun(proc, seen)

    return go


DAG_TEMPLATE = """
import datetime, json, os, sys
from airflow.sdk import DAG, task
from hopper.airflow.operators import HopperOperator, HopperMapOperator
from hopper.airflow.sensors import HopperCallSensor

SEEN = {seen!r}

def record(key, value):
    data = json.load(open(SEEN)) if os.path.exists(SEEN) else {{}}
    data[key] = value
    json.dump(data, open(SEEN, "w"))

dag = DAG({dag_id!r}, schedule=None, start_date=datetime.datetime(2025, 1, 1), catchup=False)
with dag:
{body}

if __name__ == "__main__":
    date = datetime.datetime.fromisoformat({date!r})
    dr = dag.test(logical_date=date, run_after=date)
    record("__dagrun__", str(dr.state))
    record("__tis__", {{ti.task_id: str(ti.state) for ti in dr.get_task_instances()}})
"""


def _calls(server: Server, function: str) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = server.get("/v1/calls", function=function, limit=100)["calls"]
    return calls


@pytest.fixture(scope="module")
def af_app(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    folder = tmp_path_factory.mktemp("af-app")
    file = folder / "afapp.py"
    file.write_text(
        textwrap.dedent("""
        import time
        import hopper

        app = hopper.App("afapp")

        @app.function(concurrency=4)
        def double(x: int, wait: float = 0.0) -> int:
            time.sleep(wait)
            if x < 0:
                raise ValueError(f"no negative numbers, got {x}")
            return x * 2
    """)
    )
    env = {**os.environ, "HOPPER_SERVER": server.url}
    r = subprocess.run(
        [sys.executable, "-m", "hopper", "deploy", str(file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    yield Deployed("afapp", file, folder, server)


def test_the_provider_is_registered_with_its_connection_type(airflow_env: dict[str, str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "get", "hopper-queue", "-o", "json"],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hopper-queue" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "hooks", "-o", "json"],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    hooks = {h["connection_type"]: h for h in json.loads(r.stdout[r.stdout.index("[") :])}
    assert hooks["hopper"]["class"] == "hopper.airflow.hooks.HopperHook"


def test_an_operator_defers_while_its_call_runs_and_pushes_the_output(
    run_dag: Callable[..., DagRun], af_app: Deployed, server: Server
) -> None:
    run = run_dag("""
        out = HopperOperator(task_id="double", function="afapp.double", op_kwargs={"x": 21, "wait": 1.5})

        @task
        def check(value, ti=None):
            record("output", value)
            record("call_id", ti.xcom_pull(task_ids="double", key="call_id"))
            record("link", ti.xcom_pull(task_ids="double", key="_link_HopperCallLink"))

        check(out.output)
    """)
    assert run.state == "success", run.output
    assert run.seen["output"] == 42
    call_id = run.seen["call_id"]
    assert run.seen["link"] == f"{server.url}/calls/{call_id}"
    # It waited in the trigger: the task was deferred, then resumed once the call ended.
    assert "deferred" in run.output.lower(), run.output
    assert server.get(f"/v1/calls/{call_id}")["state"] == "succeeded"


def test_a_failed_call_fails_the_task_with_its_error(
    run_dag: Callable[..., DagRun], af_app: Deployed
) -> None:
    run = run_dag("""
        HopperOperator(task_id="neg", function="afapp.double", input=-3)
    """)
    assert run.state == "failed", run.output
    assert run.seen["__tis__"]["neg"] == "failed"
    assert "HopperCallFailed" in run.output
    assert "ValueError: no negative numbers, got -3" in run.output


def _killed_while_its_call_runs(
    run_dag: Callable[..., Any], body: str, dag_id: str, server: Server, before: set[str]
) -> list[dict[str, Any]]:
    """Runs the DAG in the background, kills its Airflow process (SIGKILL) once the task's
    call runs, and returns the calls made since ``before`` (the first try's)."""
    first = run_dag(body, dag_id=dag_id, background=True)
    try:
        new: list[dict[str, Any]] = wait_for(
            lambda: [
                c for c in _calls(server, "afapp.double") if c["id"] not in before and c["state"] == "running"
            ],
            timeout=60,
            what="the first try's call to run",
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert len(new) == 1
    return new


def test_a_retry_after_a_crash_attaches_to_the_running_call(
    run_dag: Callable[..., Any], af_app: Deployed, server: Server
) -> None:
    """An Airflow worker dies (SIGKILL) while its task waits on a call; the retry of the same
    task instance finds that call instead of spawning a second."""
    body = """
        out = HopperOperator(task_id="slow", function="afapp.double", op_args=[5, 4],
                             deferrable=False)

        @task
        def check(value, ti=None):
            record("output", value)
            record("call_id", ti.xcom_pull(task_ids="slow", key="call_id"))

        check(out.output)
    """
    before = {c["id"] for c in _calls(server, "afapp.double")}
    new = _killed_while_its_call_runs(run_dag, body, "retry_dag", server, before)
    run = run_dag(body, dag_id="retry_dag")
    assert run.state == "success", run.output
    assert run.seen["output"] == 10
    assert run.seen["call_id"] == new[0]["id"]
    after = [c for c in _calls(server, "afapp.double") if c["id"] not in before]
    assert [c["id"] for c in after] == [new[0]["id"]], "the retry spawned a second call"


def test_a_retry_whose_input_rendered_differently_cancels_the_earlier_call(
    run_dag: Callable[..., Any], af_app: Deployed, server: Server, tmp_path: Path
) -> None:
    """The first try spawns with the input a file held then and is killed (SIGKILL) while its
    call runs; the file changes, and the retry of the same task instance cancels that call,
    says so in its log, and runs its own."""
    source = tmp_path / "x.txt"
    source.write_text("5")
    body = f"""
        x = int(open({str(source)!r}).read())
        out = HopperOperator(task_id="slow", function="afapp.double", op_args=[x, 30],
                             deferrable=False)

        @task
        def check(value):
            record("output", value)

        check(out.output)
    """
    before = {c["id"] for c in _calls(server, "afapp.double")}
    new = _killed_while_its_call_runs(run_dag, body, "rerender_dag", server, before)
    source.write_text("6")
    body = body.replace("op_args=[x, 30]", "op_args=[x, 0]")
    run = run_dag(body, dag_id="rerender_dag")
    assert run.state == "success", run.output
    assert run.seen["output"] == 12
    assert f"Cancelled Hopper call {new[0]['id']} of an earlier try" in run.output, run.output
    old = server.get(f"/v1/calls/{new[0]['id']}")
    assert old["state"] == "cancelled", old
    after = [c for c in _calls(server, "afapp.double") if c["id"] not in before]
    assert len(after) == 2, after


def test_a_retry_spawns_anew_when_the_earlier_call_failed(
    run_dag: Callable[..., DagRun], af_app: Deployed, server: Server
) -> None:
    body = """
        HopperOperator(task_id="neg", function="afapp.double", input=-1, retries=1,
                       retry_delay=datetime.timedelta(seconds=0))
    """
    before = {c["id"] for c in _calls(server, "afapp.double")}
    run = run_dag(body)
    assert run.state == "failed", run.output
    after = [c for c in _calls(server, "afapp.double") if c["id"] not in before]
    assert len(after) == 2 and all(c["state"] == "failed" for c in after), after


def test_the_map_operator_runs_one_map_and_keeps_failures_in_place(
    run_dag: Callable[..., DagRun], af_app: Deployed, server: Server
) -> None:
    run = run_dag("""
        ok = HopperMapOperator(task_id="ok", function="afapp.double", inputs=[1, 2, 3, 4])
        mixed = HopperMapOperator(task_id="mixed", function="afapp.double", inputs=[1, -2, 3],
                                  return_exceptions=True)
        strict = HopperMapOperator(task_id="strict", function="afapp.double", inputs=[1, -2, 3])

        @task
        def check(a, b):
            record("ok", a)
            record("mixed", b)

        check(ok.output, mixed.output)
    """)
    assert run.seen["ok"] == [2, 4, 6, 8], run.output
    mixed = run.seen["mixed"]
    assert mixed[0] == 2 and mixed[2] == 6
    assert mixed[1]["index"] == 1 and mixed[1]["error"]["code"] == "ValueError"
    assert "no negative numbers" in mixed[1]["error"]["message"]
    assert run.seen["__tis__"]["strict"] == "failed"
    said = "1 of 3 inputs failed, the first: input 1: ValueError: no negative numbers"
    assert said in run.output, run.output


def test_the_map_operator_writes_large_results_to_a_path(
    run_dag: Callable[..., DagRun], af_app: Deployed, tmp_path: Path
) -> None:
    target = tmp_path / "results.jsonl"
    run = run_dag(f"""
        big = HopperMapOperator(task_id="big", function="afapp.double", inputs=list(range(50)),
                                max_xcom_bytes=64)
        to_file = HopperMapOperator(task_id="to_file", function="afapp.double", inputs=list(range(50)),
                                    max_xcom_bytes=64, output_path={str(target)!r})

        @task
        def check(path):
            record("path", path)

        check(to_file.output)
    """)
    assert run.seen["__tis__"]["big"] == "failed"
    assert "over max_xcom_bytes" in run.output and "output_path" in run.output
    assert run.seen["path"] == str(target)
    assert [json.loads(line) for line in target.read_text().splitlines()] == [2 * i for i in range(50)]


def test_the_sensor_waits_for_a_call_spawned_elsewhere(
    run_dag: Callable[..., DagRun], af_app: Deployed
) -> None:
    call = af_app.fn("double").spawn(7, wait=1.0)
    failed = af_app.fn("double").spawn(-7)
    run = run_dag(f"""
        seen = HopperCallSensor(task_id="seen", call_id={call.object_id!r})
        HopperCallSensor(task_id="bad", call_id={failed.object_id!r})
        HopperCallSensor(task_id="poked", call_id={call.object_id!r}, deferrable=False, poke_interval=0.2)

        @task
        def check(value):
            record("output", value)

        check(seen.output)
    """)
    assert run.seen["output"] == 14, run.output
    assert run.seen["__tis__"]["poked"] == "success"
    assert run.seen["__tis__"]["bad"] == "failed"
    assert "no negative numbers, got -7" in run.output


def test_killing_a_deferred_task_cancels_its_call(airflow_env: dict[str, str], af_app: Deployed) -> None:
    """Airflow calls the trigger's on_kill when a user marks the deferred task failed or clears
    it; the call is cancelled on the server."""
    call = af_app.fn("double").spawn(1, wait=30.0)
    wait_for(lambda: call.info()["state"] == "running", what="the call to run")
    env_before = dict(os.environ)
    os.environ.update({k: v for k, v in airflow_env.items() if k.startswith("AIRFLOW")})
    try:
        from hopper.airflow.triggers import HopperCallTrigger

        trigger = HopperCallTrigger(call.object_id)
        classpath, kwargs = trigger.serialize()
        assert classpath == "hopper.airflow.triggers.HopperCallTrigger"
        asyncio.run(HopperCallTrigger(**kwargs).on_kill())
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    info = wait_for(lambda: (i := call.info())["state"] == "cancelled" and i, what="the call to be cancelled")
    assert info["error"]["code"] == "cancelled"


def _hook(airflow_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in airflow_env.items():
        if k.startswith("AIRFLOW"):
            monkeypatch.setenv(k, v)
    from hopper.airflow.hooks import HopperHook

    return HopperHook()


def test_a_map_key_never_attaches_to_a_map_of_other_inputs(
    airflow_env: dict[str, str], af_app: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = _hook(airflow_env, monkeypatch)
    first = hook.start_map("afapp.double", [1, 2, 3], key="airflow-test-grow")
    again = hook.start_map("afapp.double", [1, 2, 3], key="airflow-test-grow")
    grown = hook.start_map("afapp.double", [1, 2, 3, 4], key="airflow-test-grow")
    changed = hook.start_map("afapp.double", [1, 2, 5], key="airflow-test-grow")
    assert again["id"] == first["id"]
    assert len({first["id"], grown["id"], changed["id"]}) == 3
    assert hook.output(hook.wait_call(grown["id"])) == [2, 4, 6, 8]
    assert hook.output(hook.wait_call(changed["id"])) == [2, 4, 10]


def test_a_map_with_failed_inputs_is_reused_only_when_failures_are_results(
    airflow_env: dict[str, str], af_app: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = _hook(airflow_env, monkeypatch)
    first = hook.wait_call(hook.start_map("afapp.double", [1, -1], key="airflow-test-keep")["id"])
    assert first["state"] == "failed"
    kept = hook.start_map("afapp.double", [1, -1], key="airflow-test-keep", reuse_failed=True)
    assert kept["id"] == first["id"]
    fresh = hook.start_map("afapp.double", [1, -1], key="airflow-test-keep")
    assert fresh["id"] != first["id"]


def test_a_cleared_task_instance_gets_a_new_key_and_a_retry_keeps_its_own() -> None:
    """Airflow sets max_tries = try_number + retries when a task instance is cleared, and
    leaves it alone across retries (dag.test() starts every run at try 1, so this is checked
    on the rule itself)."""
    from types import SimpleNamespace

    from hopper.airflow.operators import _task_key

    def key(try_number: int, max_tries: int, map_index: int = -1, retries: int = 2) -> str:
        ti = SimpleNamespace(
            dag_id="d",
            task_id="t",
            run_id="r",
            map_index=map_index,
            try_number=try_number,
            max_tries=max_tries,
            task=SimpleNamespace(retries=retries),
        )
        return _task_key({"ti": ti})

    first = key(1, 2)
    assert key(2, 2) == key(3, 2) == first  # retries attach
    # `retries` edited in the DAG between a crash and its retry: the same task instance.
    assert key(2, 2, retries=5) == key(2, 2, retries=0) == first
    assert key(4, 5) != first  # cleared after try 3: a new call
    assert key(5, 5) == key(4, 5)  # and its retries attach to that one
    assert key(1, 2, map_index=0) != key(1, 2, map_index=1) != first


def test_execution_timeout_bounds_a_deferred_wait_and_cancels_the_call(
    airflow_env: dict[str, str], af_app: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator defers with its execution_timeout; when the triggerer times the wait out,
    Airflow resumes the task with __fail__ ("Trigger timeout"), and the call is cancelled.
    (dag.test() runs triggers without their timeout, so the resume is driven here.)"""
    import datetime
    from types import SimpleNamespace

    from airflow.sdk.exceptions import TaskDeferralTimeout

    from hopper.airflow.operators import HopperOperator

    _hook(airflow_env, monkeypatch)
    call = af_app.fn("double").spawn(3, wait=60.0)
    op = HopperOperator(
        task_id="late", function="afapp.double", input=3, execution_timeout=datetime.timedelta(seconds=3)
    )
    ti = SimpleNamespace(task_id="late", map_index=-1, xcom_pull=lambda **kw: call.object_id)
    with pytest.raises(TaskDeferralTimeout):
        op.resume_execution("__fail__", {"error": "Trigger timeout"}, {"ti": ti})
    assert wait_for(lambda: call.info()["state"] == "cancelled", what="the call to be cancelled")
    other = af_app.fn("double").spawn(4, wait=60.0)
    ti.xcom_pull = lambda **kw: other.object_id
    with pytest.raises(Exception, match="boom"):  # a trigger that failed: the call is left alone
        op.resume_execution("__fail__", {"error": "boom"}, {"ti": ti})
    assert other.info()["state"] in ("pending", "running")
    other.cancel()
