"""The serve runner spoken to directly over its pipes (docs/SERVE_PROTOCOL.md), no server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest


class Runner:
    def __init__(self, folder: Path, source: str, function: str) -> None:
        (folder / "app.py").write_text("import hopper\n\napp = hopper.App('r')\n" + textwrap.dedent(source))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hopper._runner", "app.py", function],
            cwd=folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(json.loads(raw))  # every stdout line must be protocol JSON
                self.cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self.cond:
                self.stderr.append(raw.decode().rstrip("\n"))
                self.cond.notify_all()

    def send(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def wait_for(self, pred: Any, timeout: float = 15) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: pred(self), timeout)
        assert ok, f"timed out; stdout={self.lines} stderr={self.stderr}"

    def answers(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.lines if "id" in m and "log" not in m}

    def logs(self, input_id: str) -> list[tuple[str, str]]:
        return [
            (m["log"], m.get("stream", "stdout"))
            for m in self.lines
            if m.get("id") == input_id and "log" in m
        ]

    def close(self) -> int:
        if self.proc.stdin:
            self.proc.stdin.close()
        return self.proc.wait(20)


@pytest.fixture
def runner(tmp_path: Path) -> Any:
    made: list[Runner] = []

    def start(source: str, function: str) -> Runner:
        r = Runner(tmp_path, source, function)
        made.append(r)
        return r

    yield start
    for r in made:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def test_ready_after_import_and_startup_output_goes_to_stderr(runner: Any) -> None:
    r = runner(
        """
        print("loading at import")
        @app.function()
        def f(x):
            return x
        """,
        "f",
    )
    r.wait_for(lambda r: {"ready": True} in r.lines)
    assert "loading at import" in r.stderr
    assert r.lines == [{"ready": True}]  # nothing printed at import reached the protocol
    assert r.close() == 0


def test_plain_function_runs_inputs_concurrently_and_routes_prints_per_input(runner: Any) -> None:
    r = runner(
        """
        import logging, sys, time
        @app.function(concurrency=8)
        def f(x):
            for i in range(5):
                print(f"input {x} line {i}")
                time.sleep(0.05)
            print(f"input {x} to stderr", file=sys.stderr)
            logging.warning("input %s logged", x)
            sys.stdout.write(f"input {x} partial")   # no newline: flushed at the end
            time.sleep(0.3)
            return x * 10
        """,
        "f",
    )
    started = time.monotonic()
    for i in range(8):
        r.send({"id": f"{i}.1", "input": i})
    r.wait_for(lambda r: len(r.answers()) == 8)
    took = time.monotonic() - started
    assert took < 2.0, f"8 inputs of ~0.55 s with concurrency 8 took {took:.2f} s"
    for i in range(8):
        assert r.answers()[f"{i}.1"] == {"id": f"{i}.1", "output": i * 10}
        logs = r.logs(f"{i}.1")
        assert all(f"input {i} " in text for text, _ in logs), logs
        assert (f"input {i} to stderr", "stderr") in logs
        assert ("WARNING:root:" + f"input {i} logged", "stderr") in logs
        assert (f"input {i} partial", "stdout") in logs
        assert [t for t, s in logs if s == "stdout"][:5] == [f"input {i} line {n}" for n in range(5)]
    assert r.close() == 0


def test_async_function_runs_on_one_event_loop(runner: Any) -> None:
    r = runner(
        """
        import asyncio, threading
        @app.function(concurrency=20)
        async def f(x):
            await asyncio.sleep(0.5)
            print("async", x)
            return threading.current_thread().name
        """,
        "f",
    )
    started = time.monotonic()
    for i in range(20):
        r.send({"id": str(i), "input": i})
    r.wait_for(lambda r: len(r.answers()) == 20)
    assert time.monotonic() - started < 2.0
    assert {a["output"] for a in r.answers().values()} == {"hopper-loop"}
    assert r.logs("7") == [("async 7", "stdout")]
    r.close()


def test_batch_gets_a_list_and_each_input_gets_its_own_answer(runner: Any) -> None:
    r = runner(
        """
        @app.function(batch=hopper.Batch(max_size=4, wait="10ms"))
        def f(xs: list[int]) -> list[int]:
            print("batch of", len(xs))
            return [ValueError(f"no {x}") if x == 2 else x + 1 for x in xs]
        """,
        "f",
    )
    r.send({"batch": [{"id": f"{i}.1", "input": i} for i in range(4)]})
    r.wait_for(lambda r: len(r.answers()) == 4)
    a = r.answers()
    assert a["0.1"]["output"] == 1 and a["3.1"]["output"] == 4
    assert a["2.1"]["error"] == {"code": "ValueError", "message": "no 2"}
    assert r.logs("1.1") == [("batch of 4", "stdout")]
    r.close()


def test_a_batch_returning_the_wrong_length_fails_its_inputs(runner: Any) -> None:
    r = runner(
        """
        @app.function(batch=hopper.Batch(max_size=4))
        def f(xs: list) -> list:
            return xs[:1]
        """,
        "f",
    )
    r.send({"batch": [{"id": "a", "input": 1}, {"id": "b", "input": 2}]})
    r.wait_for(lambda r: len(r.answers()) == 2)
    assert "returned 1 results for 2 inputs" in r.answers()["a"]["error"]["message"]
    r.close()


def test_values_that_are_not_json_fail_only_their_input(runner: Any) -> None:
    pytest.importorskip("numpy")
    r = runner(
        """
        import os
        import numpy as np
        class Thing: pass
        @app.function(concurrency=1)
        def f(kind):
            return {
                "nan": lambda: [1.0, float("nan")],
                "inf": lambda: {"x": float("inf")},
                "np_nan": lambda: np.array([1.0, np.nan]),
                "object": lambda: {"a": [Thing()]},
                "numpy": lambda: {"s": np.float32(1.5), "i": np.int64(3), "a": np.arange(3)},
                "bytes": lambda: b"\\x00\\xffhi",
                "pid": lambda: os.getpid(),
            }[kind]()
        """,
        "f",
    )
    kinds = ["nan", "inf", "np_nan", "object", "numpy", "bytes", "pid"]
    for k in kinds:
        r.send({"id": k, "input": k})
    r.wait_for(lambda r: len(r.answers()) == len(kinds))
    a = r.answers()
    assert a["nan"]["error"]["code"] == "bad_output"
    assert "nan" in a["nan"]["error"]["message"] and "float" in a["nan"]["error"]["message"]
    assert "inf" in a["inf"]["error"]["message"]
    assert "numpy" in a["np_nan"]["error"]["message"]
    assert "Thing" in a["object"]["error"]["message"]
    assert a["numpy"]["output"] == {"s": 1.5, "i": 3, "a": [0, 1, 2]}
    assert a["bytes"]["output"] == {"$bytes": "AP9oaQ=="}
    assert a["pid"]["output"] == r.proc.pid  # the process survived every bad value
    r.close()


def test_inputs_become_arguments(runner: Any) -> None:
    r = runner(
        """
        @app.function(concurrency=4)
        def f(a, b=2, *, c=3):
            return [a, b, c]
        """,
        "f",
    )
    r.send({"id": "one", "input": 1})
    r.send({"id": "two", "input": [1, 5]})
    r.send({"id": "kw", "input": {"$args": [1], "$kwargs": {"c": 9}}})
    r.send({"id": "bytes", "input": {"$bytes": "aGk="}})
    r.wait_for(lambda r: len(r.answers()) == 4)
    a = r.answers()
    assert a["one"]["output"] == [1, 2, 3]
    assert a["two"]["output"] == [1, 5, 3]
    assert a["kw"]["output"] == [1, 2, 9]
    assert a["bytes"]["output"] == [{"$bytes": "aGk="}, 2, 3]
    r.close()


def test_no_retry_and_exception_filters_mark_errors_final(runner: Any) -> None:
    r = runner(
        """
        @app.function(concurrency=4, no_retry_on=[KeyError], retries=3)
        def f(kind):
            if kind == "noretry":
                raise hopper.NoRetry(ValueError("corrupt upload"))
            if kind == "key":
                raise KeyError("k")
            raise RuntimeError("try again")
        """,
        "f",
    )
    for k in ("noretry", "key", "runtime"):
        r.send({"id": k, "input": k})
    r.wait_for(lambda r: len(r.answers()) == 3)
    a = r.answers()
    assert a["noretry"]["error"] == {"code": "ValueError", "message": "corrupt upload", "retry": False}
    assert a["key"]["error"]["retry"] is False
    assert "retry" not in a["runtime"]["error"]
    assert any("Traceback" in t for t, s in r.logs("runtime") if s == "stderr")
    r.close()


def test_enter_failure_is_a_startup_failure_with_its_traceback(runner: Any) -> None:
    r = runner(
        """
        @app.cls()
        class M:
            @hopper.enter()
            def load(self):
                raise RuntimeError("the weights are missing")
            @hopper.method()
            def go(self, x):
                return x
        """,
        "M.go",
    )
    assert r.proc.wait(20) == 1
    r.wait_for(lambda r: any("the weights are missing" in line for line in r.stderr))
    assert any("Traceback" in line for line in r.stderr)
    assert {"ready": True} not in r.lines


def test_sigterm_finishes_inputs_in_flight_then_runs_exit(runner: Any, tmp_path: Path) -> None:
    marker = tmp_path / "exited"
    r = runner(
        f"""
        import time
        @app.cls(concurrency=2)
        class M:
            @hopper.enter()
            def load(self):
                self.n = 1
            @hopper.method()
            def go(self, x):
                time.sleep(1)
                return x + self.n
            @hopper.exit()
            def bye(self):
                open({str(marker)!r}, "w").write("bye")
        """,
        "M.go",
    )
    r.wait_for(lambda r: {"ready": True} in r.lines)
    r.send({"id": "a", "input": 1})
    time.sleep(0.3)
    os.kill(r.proc.pid, signal.SIGTERM)
    time.sleep(0.1)
    r.send({"id": "late", "input": 5})  # after SIGTERM: never started, handed back by exiting
    assert r.proc.wait(20) == 0
    r.wait_for(lambda r: "a" in r.answers())
    assert r.answers() == {"a": {"id": "a", "output": 2}}
    assert marker.read_text() == "bye"
