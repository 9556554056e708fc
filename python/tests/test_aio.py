"""The asyncio twins under `.aio`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hopper import exception as hx


@pytest.fixture(scope="module")
def fns(server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from conftest import Deployed, run_python

    folder = tmp_path_factory.mktemp("aio")
    file = folder / "app.py"
    file.write_text(
        "import asyncio, time, hopper\n\napp = hopper.App('aio')\n"
        "@app.function(concurrency=16)\n"
        "async def double(x):\n"
        "    await asyncio.sleep(0.01)\n"
        "    return x * 2\n"
        "@app.function(concurrency=4)\n"
        "def slow(x):\n"
        "    time.sleep(x)\n"
        "    return x\n"
        "@app.function()\n"
        "def bad(x):\n"
        "    raise ValueError(f'bad {x}')\n"
        "@app.function(concurrency=4)\n"
        "def mul(a, b):\n"
        "    return a * b\n"
    )
    r = run_python("-m", "hopper", "deploy", str(file), env={"HOPPER_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    return Deployed("aio", file, folder, server)


def test_remote_spawn_get_and_cancel(fns: Any) -> None:
    async def main() -> None:
        double = fns.fn("double")
        assert await double.remote.aio(21) == 42
        calls = [await double.spawn.aio(i) for i in range(10)]
        assert await asyncio.gather(*(c.get.aio(timeout=30) for c in calls)) == [i * 2 for i in range(10)]
        slow = await fns.fn("slow").spawn.aio(30)
        with pytest.raises(hx.CallTimeoutError):
            await slow.get.aio(timeout=0.2)
        await slow.cancel.aio()
        with pytest.raises(hx.InputCancelledError):
            await slow.get.aio(timeout=10)
        with pytest.raises(ValueError, match="bad 1"):
            await fns.fn("bad").remote.aio(1)
        with pytest.raises(hx.FunctionNotFoundError):
            await fns.server.client().function("aio.nope").remote.aio(1)

    asyncio.run(main())


def test_many_remotes_at_once_on_one_loop(fns: Any) -> None:
    async def main() -> list[Any]:
        double = fns.fn("double")
        return await asyncio.gather(*(double.remote.aio(i) for i in range(100)))

    started = time.monotonic()
    assert asyncio.run(main()) == [i * 2 for i in range(100)]
    assert time.monotonic() - started < 20


def test_map_starmap_and_for_each(fns: Any) -> None:
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def main() -> None:
        double = fns.fn("double")
        assert [x async for x in double.map.aio(range(500))] == [i * 2 for i in range(500)]
        assert [x async for x in double.map.aio(numbers(50))] == [i * 2 for i in range(50)]
        unordered = [x async for x in double.map.aio(range(100), order_outputs=False)]
        assert sorted(unordered) == [i * 2 for i in range(100)]
        assert [x async for x in fns.fn("mul").starmap.aio([(2, 3), (4, 5)])] == [6, 20]
        assert [x async for x in fns.fn("mul").map.aio([1, 2], [3, 4])] == [3, 8]
        assert await double.for_each.aio(range(100)) is None
        outs = [x async for x in fns.fn("bad").map.aio([1, 2], return_exceptions=True)]
        assert all(isinstance(o, hx.InputFailedError) for o in outs)
        with pytest.raises(ValueError):
            async for _ in fns.fn("bad").map.aio([1, 2]):
                pass

    asyncio.run(main())


def test_leaving_an_async_map_early_cancels_it(fns: Any) -> None:
    from contextlib import aclosing

    from conftest import wait_for

    async def main() -> None:
        async with aclosing(fns.fn("slow").map.aio([0.2] * 100)) as results:
            async for _ in results:
                break

    asyncio.run(main())
    call = fns.server.get("/v1/calls", function="aio.slow", origin="map", limit=1)["calls"][0]
    wait_for(
        lambda: fns.server.get(f"/v1/calls/{call['id']}")["state"] == "cancelled",
        what="the async map to be cancelled",
    )


def test_breaking_out_of_an_async_map_cancels_it_when_asyncio_run_ends(fns: Any) -> None:
    from conftest import wait_for

    async def main() -> None:
        async for _ in fns.fn("slow").map.aio([0.2] * 100):
            break  # no aclosing: asyncio.run ends right after

    asyncio.run(main())
    call = fns.server.get("/v1/calls", function="aio.slow", origin="map", limit=1)["calls"][0]
    wait_for(
        lambda: fns.server.get(f"/v1/calls/{call['id']}")["state"] == "cancelled",
        what="the async map to be cancelled",
    )
    assert fns.server.get(f"/v1/calls/{call['id']}")["inputs"]["cancelled"] >= 80


def test_an_input_over_the_inline_limit_goes_through_the_async_client_as_a_blob(deploy: Any) -> None:
    """12 MB of text, over the server's inline limit (1 MiB here): stored as a blob first, so
    the call is made and its output comes back whole."""
    d = deploy(
        """
        @app.function
        def echo(x):
            return x
        """
    )

    async def round_trip() -> Any:
        call = await d.fn("echo").spawn.aio("x" * 12_000_000)
        return await call.get.aio(timeout=60)

    assert asyncio.run(round_trip()) == "x" * 12_000_000


def test_blob_transfers_leave_the_event_loop_free() -> None:
    """A large argument's upload and a large output's download are made in a thread: other
    tasks on the loop go on meanwhile (here, against a stand-in server that takes 1.5 s to
    answer each transfer)."""
    import hashlib
    import http.server
    import json
    import threading

    import hopper

    data = b"\x00\x01" * (300 * 1024)  # over the 256 KiB inline bound: a blob
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    reference = {"$blob": digest, "size": len(data)}

    class Slow(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            sent = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/v1/blobs":
                assert sent == data
                time.sleep(1.5)
                self.answer(201, json.dumps(reference).encode())
            else:
                assert digest in sent.decode(), sent  # the spawn refers to the blob
                call = {"id": "hc-01M97Q0000000000000000000", "state": "succeeded", "output": reference}
                self.answer(201, json.dumps(call).encode())

        def do_GET(self) -> None:
            assert self.path == "/v1/blobs/" + digest, self.path
            time.sleep(1.5)
            self.answer(200, data, "application/octet-stream")

    stand_in = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    try:
        client = hopper.Client(server=f"http://127.0.0.1:{stand_in.server_port}")
        f = hopper.Function.from_name("a.f", client=client)

        async def main() -> tuple[Any, float]:
            gaps: list[float] = []
            done = asyncio.Event()

            async def tick() -> None:
                last = time.monotonic()
                while not done.is_set():
                    await asyncio.sleep(0.02)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(tick())
            try:
                out = await f.remote.aio(data)
            finally:
                done.set()
                await ticker
            return out, max(gaps)

        out, longest = asyncio.run(main())
        assert out == data
        assert longest < 1.0, f"the loop stood still for {longest:.2f} s"
    finally:
        stand_in.shutdown()
