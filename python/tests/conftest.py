"""Fixtures: a real `hopper serve` on a free loopback port with a temporary data folder, and
a helper that writes an app file and deploys it with `python -m hopper deploy`.

The binary is $HOPPER_BIN, else the repository's target/release/hopper or target/debug/hopper,
else `hopper` on PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import hopper

REPO = Path(__file__).resolve().parents[2]


def hopper_bin() -> str:
    env = os.environ.get("HOPPER_BIN")
    if env:
        return env
    for candidate in (REPO / "target/release/hopper", REPO / "target/debug/hopper"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("hopper")
    if found:
        return found
    pytest.exit("no hopper binary: set HOPPER_BIN or run `cargo build --release`", returncode=2)


@dataclass
class Server:
    url: str
    data: Path
    proc: subprocess.Popen[bytes]
    token: str | None = None
    log: list[str] = field(default_factory=list)

    def client(self, token: str | None = None) -> hopper.Client:
        return hopper.Client(self.url, token if token is not None else self.token)

    def get(self, path: str, **params: Any) -> Any:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        r = httpx.get(self.url + path, params=params, headers=headers, timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any = None) -> Any:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        r = httpx.post(self.url + path, json=body or {}, headers=headers, timeout=30)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(data: Path, *args: str, token: str | None = None) -> Server:
    env = {k: v for k, v in os.environ.items() if k not in ("HOPPER_TOKEN", "HOPPER_SERVER")}
    env["RUST_LOG"] = "warn"
    cmd = [hopper_bin(), "serve", "--data", str(data), "--listen", "127.0.0.1:0", *args]
    if token:
        cmd += ["--token", token]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        raw = proc.stdout.readline()
        if not raw:
            break
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        if line.startswith("hopper listening on "):
            url = line.removeprefix("hopper listening on ").strip()
            break
    if url is None:
        proc.kill()
        raise RuntimeError("hopper serve did not start:\n" + "\n".join(lines))
    server = Server(url, data, proc, token, lines)
    stdout = proc.stdout

    def drain() -> None:  # keep the pipe from filling; keep the tail for failures
        for raw in stdout:
            server.log.append(raw.decode(errors="replace").rstrip())
            del server.log[:-500]

    threading.Thread(target=drain, daemon=True).start()
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the session (payload limit 1 MiB, for the size test)."""
    s = start_server(tmp_path_factory.mktemp("hopper-data"), "--max-payload", "1MiB")
    os.environ["HOPPER_SERVER"] = s.url
    os.environ.pop("HOPPER_TOKEN", None)
    hopper.Client.set_default(None)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second server that requires a token."""
    s = start_server(tmp_path_factory.mktemp("hopper-token"), token="s3cret-token")
    yield s
    s.stop()


_counter = iter(range(1_000_000))


@dataclass
class Deployed:
    app: str
    file: Path
    folder: Path
    server: Server

    def fn(self, name: str) -> hopper.Function:
        return hopper.Function.from_name(f"{self.app}.{name}", client=self.server.client())


def run_python(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def deploy(server: Server, tmp_path: Path) -> Callable[..., Deployed]:
    """deploy(source, name=...) writes `app = hopper.App(NAME)` + source to a file in a
    temporary folder and deploys it with `python -m hopper deploy`."""

    def go(source: str, name: str | None = None, target: Server | None = None) -> Deployed:
        srv = target or server
        app = name or f"t{next(_counter)}-{os.getpid() % 10000}"
        folder = tmp_path / app
        folder.mkdir(parents=True, exist_ok=True)
        file = folder / "app.py"
        header = f"import hopper\n\napp = hopper.App({app!r})\n"
        file.write_text(header + textwrap.dedent(source))
        env = {"HOPPER_SERVER": srv.url}
        if srv.token:
            env["HOPPER_TOKEN"] = srv.token
        r = run_python("-m", "hopper", "deploy", str(file), env=env)
        assert r.returncode == 0, f"deploy failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return Deployed(app, file, folder, srv)

    return go


def wait_for(check: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def airflow_env(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An Airflow home with a migrated SQLite database and a ``hopper_default`` connection to
    the session's server."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW_CONN_HOPPER_DEFAULT": "hopper://" + server.url.removeprefix("http://"),
    }
    env.pop("HOPPER_SERVER", None)  # the connection, not the environment, names the server
    migrate = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return env
