"""map, starmap and for_each: order, 50,000 inputs with bounded memory, early exits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Deployed, Server, run_python, wait_for

from hopper import exception as hx

SOURCE = """
import random, time

@app.function(batch=hopper.Batch(max_size=500, wait="5ms"), concurrency=4)
def inc(xs: list[int]) -> list[int]:
    return [x + 1 for x in xs]

@app.function(concurrency=16)
def jitter(x):
    time.sleep(random.random() * 0.02)
    return x

@app.function(concurrency=2)
def slow(x):
    time.sleep(0.2)
    return x

@app.function(concurrency=8)
def fail_on(x, bad=-1):
    if x == bad:
        raise ValueError(f"input {x} is bad")
    time.sleep(0.01)
    return x

@app.function(concurrency=8)
def mul(a, b):
    return a * b
"""

N = 50_000


@pytest.fixture(scope="module")
def app(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    folder = tmp_path_factory.mktemp("maps")
    file = folder / "app.py"
    file.write_text("import hopper\n\napp = hopper.App('maps')\n" + SOURCE)
    r = run_python("-m", "hopper", "deploy", str(file), env={"HOPPER_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    return Deployed("maps", file, folder, server)


class Source:
    """An input generator that counts how far it has been read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.pulled += 1
            yield i


def latest_map(server: Server, function: str) -> dict:
    calls = server.get("/v1/calls", function=function, origin="map", limit=1)["calls"]
    return calls[0]


def test_ordered_map_of_50000_inputs_streams_with_bounded_memory(app: Deployed) -> None:
    src = Source(N)
    lag = 0
    started = time.monotonic()
    for i, out in enumerate(app.fn("inc").map(src, max_outstanding=5_000, chunk_size=1_000)):
        assert out == i + 1
        lag = max(lag, src.pulled - i)
    took = time.monotonic() - started
    assert i == N - 1
    # Backpressure: never more than max_outstanding (+ one chunk) read ahead of the results.
    assert lag <= 6_000, lag
    print(f"ordered map: {N} inputs in {took:.1f} s ({N / took:,.0f}/s)")


def test_unordered_map_of_50000_inputs(app: Deployed) -> None:
    src = Source(N)
    seen = set()
    lag = 0
    for n, out in enumerate(app.fn("inc").map(src, order_outputs=False, max_outstanding=5_000)):
        seen.add(out)
        lag = max(lag, src.pulled - n)
    assert seen == set(range(1, N + 1))
    assert lag <= 6_001, lag


def test_unordered_map_yields_in_completion_order(app: Deployed) -> None:
    outs = list(app.fn("jitter").map(range(200), order_outputs=False))
    assert sorted(outs) == list(range(200))
    assert list(app.fn("jitter").map(range(200))) == list(range(200))


def test_empty_map_ends_at_once(app: Deployed) -> None:
    assert list(app.fn("inc").map([])) == []


def test_map_zips_iterables_and_starmap_unpacks(app: Deployed) -> None:
    assert list(app.fn("mul").map([1, 2, 3], [10, 20, 30])) == [10, 40, 90]
    assert list(app.fn("mul").starmap([(2, 3), (4, 5)])) == [6, 20]
    assert list(app.fn("fail_on").starmap([(1,), (2, 5)])) == [1, 2]


def _map_on_a_terminal(server: Server, code: str) -> str:
    """What a script's map writes to a terminal (stderr on a pseudo-terminal)."""
    import pty

    script = (
        "import hopper, sys\n"
        f"client = hopper.Client(server={server.url!r})\n"
        "f = hopper.Function.from_name('maps.jitter', client=client)\n" + code
    )
    leader, follower = pty.openpty()
    # stdout to a pipe, to tell the outputs apart; `printed` runs put it on the terminal too.
    stdout: Any = follower if "# printed" in code else subprocess.PIPE
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=stdout, stderr=follower)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the script ended: the terminal is gone
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(60) == 0, out.decode(errors="replace")
    piped = proc.stdout.read().decode() if proc.stdout is not None else ""
    return out.decode(errors="replace") + "|stdout|" + piped


def test_a_map_shows_its_progress_on_a_terminal(app: Deployed, server: Server) -> None:
    shown = _map_on_a_terminal(server, "print(sum(f.map(range(2000))))")
    # Redrawn in place, then a last line; the outputs themselves go to stdout untouched.
    assert "\rmap maps.jitter: " in shown and " of 2,000 done" in shown, shown
    assert "map maps.jitter: 2,000 done in " in shown, shown
    assert shown.endswith("|stdout|1999000\n"), shown
    # A caller printing each output on the same terminal: its lines never run into the
    # progress line, which is taken off before each output and drawn again below.
    shown = _map_on_a_terminal(server, "for x in f.map(range(300)):\n    print('result', x)  # printed")
    assert all(f"result {x}\r\n" in shown for x in range(300)), shown
    assert not re.search(r"(done|/s)result", shown), shown
    # Off with progress=False; and off by default when stderr is not a terminal.
    assert "map maps.jitter" not in _map_on_a_terminal(server, "print(sum(f.map(range(50), progress=False)))")
    script = (
        f"import hopper; client = hopper.Client(server={server.url!r})\n"
        "print(sum(hopper.Function.from_name('maps.jitter', client=client).map(range(50))))"
    )
    r = run_python("-c", script)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "1225\n", r.stderr


def test_for_each_keeps_no_results(app: Deployed, server: Server) -> None:
    assert app.fn("jitter").for_each(range(100)) is None
    call = latest_map(server, "maps.jitter")
    assert call["discard_results"] is True and call["inputs"]["succeeded"] == 100


def test_return_exceptions_yields_the_failure_in_place(app: Deployed) -> None:
    outs = list(app.fn("fail_on").starmap([(i, 3) for i in range(6)], return_exceptions=True))
    assert outs[:3] == [0, 1, 2] and outs[4:] == [4, 5]
    assert isinstance(outs[3], hx.InputFailedError) and isinstance(outs[3], ValueError)
    assert outs[3].index == 3 and "input 3 is bad" in outs[3].message


def test_first_failure_raises_and_cancels_the_rest(app: Deployed, server: Server) -> None:
    with pytest.raises(ValueError, match="input 5 is bad") as info:
        for _ in app.fn("fail_on").starmap(
            ((i, 5) for i in range(5_000)), chunk_size=100, max_outstanding=500
        ):
            pass
    call_id = info.value.call_id  # type: ignore[attr-defined]
    call = wait_for(
        lambda: (c := server.get(f"/v1/calls/{call_id}"))["state"] != "running" and c, what="the map to end"
    )
    assert call["state"] in ("failed", "cancelled")
    assert call["inputs"]["cancelled"] > 0
    assert call["inputs"]["total"] < 5_000  # the rest was never even sent


def test_leaving_the_loop_early_cancels_the_rest(app: Deployed, server: Server) -> None:
    for n, _ in enumerate(app.fn("slow").map(range(100))):
        if n == 1:
            break
    call = latest_map(server, "maps.slow")
    call = wait_for(
        lambda: (c := server.get(f"/v1/calls/{call['id']}"))["state"] == "cancelled" and c,
        what="the map to be cancelled",
    )
    assert call["inputs"]["cancelled"] >= 90


def test_keyboard_interrupt_cancels_the_map(app: Deployed, server: Server) -> None:
    code = (
        "import sys, hopper\n"
        "f = hopper.Function.from_name('maps.slow')\n"
        "for out in f.map(range(1000)):\n"
        "    print(out, flush=True)\n"
    )
    env = dict(os.environ, HOPPER_SERVER=server.url)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "0"
    proc.send_signal(signal.SIGINT)
    proc.wait(20)
    call = latest_map(server, "maps.slow")
    wait_for(
        lambda: server.get(f"/v1/calls/{call['id']}")["state"] == "cancelled", what="the map to be cancelled"
    )


def test_get_on_a_map_call_returns_its_outputs(app: Deployed, server: Server) -> None:
    list(app.fn("mul").map([1, 2], [3, 4]))
    call = latest_map(server, "maps.mul")
    assert server.client().call(call["id"]).get(timeout=10) == [3, 8]


def test_get_on_a_failed_map_names_its_first_failed_input(app: Deployed, server: Server) -> None:
    outs = list(app.fn("fail_on").starmap([(i, 4) for i in range(6)], return_exceptions=True))
    assert isinstance(outs[4], hx.InputFailedError)
    call = latest_map(server, "maps.fail_on")
    with pytest.raises(ValueError, match="input 4 is bad") as info:
        server.client().call(call["id"]).get(timeout=10)
    assert info.value.index == 4 and info.value.call_id == call["id"]  # type: ignore[attr-defined]


def test_a_map_from_another_process(app: Deployed, server: Server) -> None:
    r = run_python(
        "-c",
        "import hopper; print(sum(hopper.Function.from_name('maps.inc').map(range(1000))))",
        env={"HOPPER_SERVER": server.url},
    )
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == sum(range(1, 1001))


def test_a_map_that_loses_its_server_names_its_call(tmp_path_factory: pytest.TempPathFactory) -> None:
    from conftest import start_server

    import hopper

    own = start_server(tmp_path_factory.mktemp("lost"))
    try:
        folder = tmp_path_factory.mktemp("lostapp")
        file = folder / "app.py"
        file.write_text(
            "import hopper, time\napp = hopper.App('lost')\n"
            "@app.function\ndef slow(x):\n    time.sleep(0.05)\n    return x\n"
        )
        r = run_python("-m", "hopper", "deploy", str(file), env={"HOPPER_SERVER": own.url})
        assert r.returncode == 0, r.stderr
        client = hopper.Client(own.url, retries=1)
        outputs = hopper.Function.from_name("lost.slow", client=client).map(range(1000))
        assert next(outputs) == 0
        own.proc.kill()  # SIGKILL: the server is gone mid-map
        own.proc.wait()
        with pytest.raises(hx.ConnectionError, match=r"The map is call hc-\S+: if the server finishes it"):
            for _ in outputs:
                pass
    finally:
        own.stop()
