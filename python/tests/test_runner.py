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
    r.wait_for(lambda r: {"ready": True} in r.lines and "loading at import" in r.stderr)
    # Loading is said first, so the worker leases nothing until ready; nothing printed at
    # import reached the protocol.
    assert r.lines == [{"ready": False}, {"ready": True}]
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
    r.send({"id": "two", "input": {"$args": [1, 5]}})
    r.send({"id": "list", "input": [1, 5]})  # one argument: f(a, b=2) can take a list as `a`
    r.send({"id": "kw", "input": {"$args": [1], "$kwargs": {"c": 9}}})
    r.send({"id": "bytes", "input": {"$bytes": "aGk="}})
    r.wait_for(lambda r: len(r.answers()) == 5)
    a = r.answers()
    assert a["one"]["output"] == [1, 2, 3]
    assert a["two"]["output"] == [1, 5, 3]
    assert a["list"]["output"] == [[1, 5], 2, 3]
    assert a["kw"]["output"] == [1, 2, 9]
    assert a["bytes"]["output"] == [{"$bytes": "aGk="}, 2, 3]
    r.close()
    g = runner(
        """
        @app.function()
        def g(a, b):
            return a - b
        """,
        "g",
    )
    g.send({"id": "bare", "input": [5, 2]})  # g needs two: a bare list is spread
    # Arguments that do not fit fail at once: no retry mends them.
    g.send({"id": "three", "input": {"$args": [1, 2, 3]}})
    g.send({"id": "unknown", "input": {"$args": [1, 2], "$kwargs": {"d": 4}}})
    # A misspelt keyword is named, as Python names it, not the argument it left missing.
    g.send({"id": "misspelt", "input": {"$args": [1], "$kwargs": {"c": 2}}})
    g.wait_for(lambda r: len(r.answers()) == 4)
    a = g.answers()
    assert a["bare"]["output"] == 3
    for bad in ("three", "unknown", "misspelt"):
        assert a[bad]["error"]["code"] == "TypeError" and a[bad]["error"]["retry"] is False, a[bad]
        assert a[bad]["error"]["message"].startswith("g(): "), a[bad]
    assert a["misspelt"]["error"]["message"] == "g(): got an unexpected keyword argument 'c'", a["misspelt"]
    g.close()


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
    noretry = a["noretry"]["error"]
    assert (noretry["code"], noretry["message"], noretry["retry"]) == ("ValueError", "corrupt upload", False)
    # The remote traceback travels with the error: the user's frames, where the input failed.
    assert ", in f" in noretry["traceback"] and "hopper/_runner.py" not in noretry["traceback"]
    assert "module" not in noretry and a["key"]["error"]["traceback"].endswith("KeyError: 'k'\n")
    assert a["key"]["error"]["retry"] is False
    assert "retry" not in a["runtime"]["error"]
    # The input's log has the traceback of the user's code, not the runner's frames.
    traceback = [t for t, s in r.logs("runtime") if s == "stderr"]
    assert traceback[0] == "Traceback (most recent call last):", traceback
    assert any(", in f" in t for t in traceback) and traceback[-1] == "RuntimeError: try again", traceback
    assert not any("hopper/_runner.py" in t or "concurrent/futures" in t for t in traceback), traceback
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


def test_a_cancelled_input_stops_and_frees_its_slot(runner: Any) -> None:
    r = runner(
        """
        import time
        @app.function(concurrency=1)
        def f(x):
            if x == "forever":
                try:
                    while True:
                        time.sleep(0.01)
                finally:
                    print("stopped")  # a finally block still runs
            return x
        """,
        "f",
    )
    r.send({"id": "a.1", "input": "forever"})
    time.sleep(0.3)
    r.send({"cancel": "a.1"})
    r.send({"id": "b.1", "input": "next"})  # the only thread is free again
    r.wait_for(lambda r: "b.1" in r.answers())
    assert r.answers()["b.1"]["output"] == "next"
    assert "a.1" not in r.answers()  # a cancelled input is not answered
    r.send({"cancel": "b.1"})  # a cancel for an input that ended does nothing
    r.send({"cancel": "nobody"})
    r.send({"id": "c.1", "input": "after"})
    r.wait_for(lambda r: "c.1" in r.answers())
    assert r.answers()["c.1"]["output"] == "after"
    assert r.close() == 0


def test_a_cancelled_async_input_gets_its_task_cancelled(runner: Any) -> None:
    r = runner(
        """
        import asyncio
        @app.function(concurrency=4)
        async def f(x):
            print("started")
            try:
                await asyncio.sleep(3600 if x == "forever" else 0)
            except asyncio.CancelledError:
                print("task cancelled")
                raise
            return x
        """,
        "f",
    )
    r.send({"id": "a.1", "input": "forever"})
    # Cancelled once it runs (a cancel that comes first stops it before it starts).
    r.wait_for(lambda r: any(m.get("id") == "a.1" and m.get("log") == "started" for m in r.lines))
    r.send({"cancel": "a.1"})
    r.wait_for(lambda r: any(m.get("log") == "task cancelled" for m in r.lines))
    r.send({"id": "b.1", "input": "next"})
    r.wait_for(lambda r: "b.1" in r.answers())
    assert "a.1" not in r.answers()
    assert r.close() == 0  # nothing left in flight: it exits at once


def test_a_batch_stops_only_when_all_its_inputs_are_cancelled(runner: Any) -> None:
    r = runner(
        """
        import time
        @app.function(batch=hopper.Batch(max_size=2))
        def f(xs):
            time.sleep(1)
            return xs
        """,
        "f",
    )
    r.send({"batch": [{"id": "a", "input": 1}, {"id": "b", "input": 2}]})
    time.sleep(0.2)
    r.send({"cancel": "a"})
    r.wait_for(lambda r: len(r.answers()) == 2)
    assert r.answers()["b"]["output"] == 2


def test_an_input_that_cannot_be_decoded_fails_at_once(runner: Any) -> None:
    r = runner(
        """
        @app.function(batch=hopper.Batch(max_size=3))
        def f(xs):
            return [len(x) for x in xs]
        """,
        "f",
    )
    r.send(
        {
            "batch": [
                {"id": "bad", "input": {"$bytes": "not base64!"}},
                {"id": "good", "input": {"$bytes": "aGk="}},
            ]
        }
    )
    r.wait_for(lambda r: len(r.answers()) == 2)
    bad = r.answers()["bad"]["error"]
    assert bad["code"] == "bad_input" and bad["retry"] is False, bad
    assert r.answers()["good"]["output"] == 2
    r.close()


def test_an_exception_whose_message_cannot_be_made_fails_only_its_input(runner: Any) -> None:
    r = runner(
        """
        class Odd(Exception):
            def __str__(self):
                raise RuntimeError("no")
        @app.function()
        def f(x):
            if x:
                raise Odd()
            return "fine"
        """,
        "f",
    )
    r.send({"id": "a", "input": True})
    r.wait_for(lambda r: "a" in r.answers())
    assert r.answers()["a"]["error"]["code"] == "Odd"
    r.send({"id": "b", "input": False})
    r.wait_for(lambda r: "b" in r.answers())
    assert r.answers()["b"]["output"] == "fine"
    r.close()
