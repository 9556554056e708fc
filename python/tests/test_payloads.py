"""Payloads beyond inline JSON from the Python SDK, with nothing for the user to do: bytes
arguments and return values of any size travel as bytes (stored as blobs past 256 KiB, never
base64), a large list of floats travels as a JSON blob, a batched map over byte strings gets
them back in order, and text travels as UTF-8."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from conftest import Server

import hopper


def _noise(n: int) -> bytes:
    seed = hashlib.sha256(str(n).encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]


@pytest.fixture(scope="module")
def payload_app(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("payloads")
    (folder / "app.py").write_text(
        """
import hashlib
import hopper

app = hopper.App("payloads")

@app.function(timeout="300s")
def digest(data: bytes) -> dict:
    assert isinstance(data, bytes), type(data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

@app.function(timeout="300s")
def make(n: int) -> bytes:
    seed = hashlib.sha256(str(n).encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]

@app.function()
def floats(n: int) -> list:
    return [i / 3 for i in range(n)]

@app.function()
def echo(value):
    return value

@app.function(batch=hopper.Batch(max_size=8, wait="100ms"))
def sizes(items: list) -> list:
    assert all(isinstance(b, bytes) for b in items), [type(b) for b in items]
    return [len(b) for b in items]
"""
    )
    env = {**os.environ, "HOPPER_SERVER": server.url}
    r = subprocess.run(
        [sys.executable, "-m", "hopper", "deploy", str(folder / "app.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return server


def _fn(server: Server, name: str) -> hopper.Function:
    return hopper.Function.from_name(f"payloads.{name}", client=server.client())


def test_bytes_of_any_size_reach_the_function_as_bytes(payload_app: Server) -> None:
    digest = _fn(payload_app, "digest")
    for size in (0, 10, 300_000, 64 * 1024 * 1024):
        data = _noise(size)
        assert digest.remote(data) == {"sha256": hashlib.sha256(data).hexdigest(), "size": size}
    # bytearray and memoryview are bytes too.
    assert digest.remote(bytearray(b"abc"))["size"] == 3
    assert digest.remote(memoryview(_noise(400_000)))["size"] == 400_000


def test_a_function_returns_large_bytes_and_a_large_list(payload_app: Server) -> None:
    out = _fn(payload_app, "make").remote(50 * 1024 * 1024)
    assert isinstance(out, bytes) and out == _noise(50 * 1024 * 1024)
    # 2 million floats: over the 4 MiB inline limit as JSON, so a JSON blob.
    floats = _fn(payload_app, "floats").remote(2_000_000)
    assert len(floats) == 2_000_000 and floats[3] == 1.0
    # spawn, then get later.
    call = _fn(payload_app, "make").spawn(1_000_000)
    assert call.get(timeout=120) == _noise(1_000_000)


def test_references_hold_no_bytes_and_the_output_is_stored_apart(payload_app: Server) -> None:
    call = _fn(payload_app, "make").spawn(5_000_000)
    call.get(timeout=120)
    shown = payload_app.get(f"/v1/calls/{call.object_id}")
    assert set(shown["output"]) == {"$blob", "size"}, shown
    assert shown["output"]["size"] == 5_000_000


def test_a_batched_map_over_bytes_keeps_order(payload_app: Server) -> None:
    items = [_noise(n) for n in (1, 500_000, 7, 300_000, 2, 1_000_000, 3, 9, 270_000, 4)]
    assert list(_fn(payload_app, "sizes").map(items)) == [len(b) for b in items]
    # A bulk spawn of bytes on both sides of the inline limit.
    calls = _fn(payload_app, "sizes").spawn_many(items[:4])
    assert [c.get(timeout=120) for c in calls] == [len(b) for b in items[:4]]


def test_text_travels_as_utf8(payload_app: Server) -> None:
    # 1.6 MB of emoji: 6.4 MB as \\u escapes, 1.6 MB as UTF-8 (and a blob past 256 KiB).
    text = "\U0001f600" * 400_000
    assert _fn(payload_app, "echo").remote(text) == text
    small = "héllo \U0001f600 wörld"
    assert _fn(payload_app, "echo").remote(small) == small


def test_a_blob_over_the_servers_limit_is_refused_naming_it(tmp_path: Any) -> None:
    from conftest import start_server

    srv = start_server(tmp_path / "data", "--max-blob", "1MiB", "--no-workers")
    try:
        (tmp_path / "app.py").write_text(
            'import hopper\napp = hopper.App("lim")\n\n@app.function()\ndef f(x):\n    return x\n'
        )
        import subprocess
        import sys

        r = subprocess.run(
            [sys.executable, "-m", "hopper", "deploy", str(tmp_path / "app.py")],
            env={**os.environ, "HOPPER_SERVER": srv.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        f = hopper.Function.from_name("lim.f", client=srv.client())
        with pytest.raises(hopper.exception.InvalidInputError, match="--max-blob"):
            f.spawn(_noise(3 * 1024 * 1024))
        assert srv.get("/v1/calls")["calls"] == []
    finally:
        srv.stop()


def test_an_inline_bound_that_is_not_a_number_is_said_and_the_default_kept() -> None:
    import subprocess
    import sys

    probe = "import hopper._codec as c; print(c.INLINE_MAX)"
    env = {**os.environ, "HOPPER_INLINE_MAX": "256k"}
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(256 * 1024)
    assert "HOPPER_INLINE_MAX='256k' is not a number of bytes" in r.stderr, r.stderr
    env["HOPPER_INLINE_MAX"] = "4096"
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert (r.stdout.strip(), r.stderr) == ("4096", "")
