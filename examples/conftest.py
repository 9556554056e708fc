"""Fixtures for the examples' tests: the SDK test suite's real server (python/tests/conftest.py,
loaded under another name), and `deploy_example(path)`, which deploys an example's app file with
`python -m hopper deploy` as its README says.

The examples' tests need the examples' packages (examples/requirements.txt); CI runs them in
their own virtualenv (crates/cli/tests/examples_e2e.rs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "hopper_sdk_fixtures", HERE.parent / "python/tests/conftest.py"
)
assert _spec is not None and _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fixtures  # dataclasses look their module up there
_spec.loader.exec_module(fixtures)

Server = fixtures.Server
start_server = fixtures.start_server
wait_for = fixtures.wait_for


server = fixtures.server
airflow_env = fixtures.airflow_env


@pytest.fixture(scope="session")
def deploy_example(server: Server) -> Callable[..., None]:
    """deploy_example(path, **env) runs `python -m hopper deploy PATH` against the server."""

    def go(path: Path, **env: str) -> None:
        r = subprocess.run(
            [sys.executable, "-m", "hopper", "deploy", str(path)],
            env={**os.environ, "HOPPER_SERVER": server.url, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, f"deploy of {path} failed:\n{r.stdout}\n{r.stderr}"

    return go


@contextlib.contextmanager
def http_process(cmd: list[str], url: str, what: str, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Starts ``cmd`` (a server), waits until ``url`` answers HTTP (30 s at most), and stops it
    (SIGTERM) on the way out."""
    proc = subprocess.Popen(cmd, **popen)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, f"{what} did not start"
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
