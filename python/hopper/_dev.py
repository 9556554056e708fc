"""``python -m hopper serve FILE.py``: the development loop, as ``modal serve`` is for Modal.

It deploys the app in ``FILE.py`` to a server (a temporary one of its own, or ``--server``),
then watches the app's folder: each time a file the code snapshot would ship changes, the app
is deployed again, so the next call runs the new code. Meanwhile it prints every call of the
app that ends (its outcome, output or error, and its log lines). Ctrl-C stops it, and the
temporary server with it.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from . import _snapshot
from .client import Client, _Req
from .exception import Error

#: Seconds between two looks at the folder and at the calls.
POLL_SECONDS = 0.5
#: Log lines printed per call; the rest are left to ``hopper logs``.
LOG_LINES = 20
_TERMINAL = ("succeeded", "failed", "cancelled")


def _own_output() -> set[tuple[int, int]]:
    """The files this process writes its output to (stdout, stderr redirected to a file), as
    ``(device, inode)``: a change to them is the loop's own doing, never a reason to deploy."""
    own = set()
    for stream in (sys.stdout, sys.stderr):
        try:
            st = os.fstat(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
        own.add((st.st_dev, st.st_ino))
    return own


def _fingerprint(folder: str, ignored: set[tuple[int, int]]) -> dict[str, Any]:
    """What the snapshot of ``folder`` would ship, as each file's size and modification time
    by path (or, under ``""``, the reason it cannot be shipped); files in ``ignored`` left out."""
    try:
        files = _snapshot.collect(folder, max_bytes=1 << 62)
    except (_snapshot.SnapshotError, OSError) as e:
        return {"": str(e)}
    out: dict[str, Any] = {}
    for relative, full in files:
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in ignored:
            out[relative] = (st.st_size, st.st_mtime_ns)
    return out


def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The paths that differ between two fingerprints, sorted."""
    return sorted(p or "(the folder)" for p in set(before) | set(after) if before.get(p) != after.get(p))


def _stop_with_parent() -> None:
    """In the child, before it runs the server: SIGTERM it when its parent dies (Linux's
    ``PR_SET_PDEATHSIG``)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _start_server(data: str) -> tuple[subprocess.Popen[bytes], str]:
    """A temporary ``hopper serve`` on a free loopback port, storing in ``data``."""
    from .cli import UsageError, find_binary

    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    env.pop("HOPPER_TOKEN", None)
    proc = subprocess.Popen(
        [find_binary(), "serve", "--listen", "127.0.0.1:0", "--data", data],
        stdout=subprocess.PIPE,
        env=env,
        # On Linux the server is told to stop if this process dies without stopping it.
        preexec_fn=_stop_with_parent if sys.platform.startswith("linux") else None,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().decode(errors="replace").strip()
    prefix = "hopper listening on "
    if not first.startswith(prefix):
        proc.kill()
        proc.wait()
        raise UsageError(f"the temporary server did not start: {first or 'it exited'}")
    return proc, first[len(prefix) :]


def _deploy(file: str, server: str, token: str | None) -> str | None:
    """Deploys ``file`` in a fresh interpreter (so every edit is imported anew); prints what
    it said. Returns the app's name, or ``None`` when the deploy was refused."""
    cmd = [sys.executable, "-m", "hopper", "deploy", file, "--server", server]
    if token:
        cmd += ["--token", token]
    done = subprocess.run(cmd, capture_output=True, text=True)
    for line in (done.stdout + done.stderr).splitlines():
        print(f"  {line}" if line.startswith(" ") else line, flush=True)
    found = re.search(r"deployed app (\S+) version", done.stdout)
    return found.group(1) if done.returncode == 0 and found else None


def _show(client: Client, call: dict[str, Any]) -> None:
    """Prints an ended call: its outcome, its output or error, its log lines."""
    name, state, call_id = call.get("function"), call.get("state"), call.get("id")
    inputs = call.get("inputs", {})
    if call.get("origin") == "map":
        print(
            f"{name} {call_id} {state}: a map of {inputs.get('total', 0):,} inputs, "
            f"{inputs.get('succeeded', 0):,} succeeded, {inputs.get('failed', 0):,} failed",
            flush=True,
        )
        return
    if state == "succeeded":
        text = json.dumps(call.get("output"))
        detail = text if len(text) <= 300 else text[:300] + "…"
    else:
        error = call.get("error") or {}
        detail = f"{error.get('code', state)}: {error.get('message', '')}"
    print(f"{name} {call_id} {state}: {detail}", flush=True)
    try:
        page = client._send(_Req("GET", f"/v1/calls/{call_id}/logs", params={"limit": LOG_LINES + 1}))
    except Error:
        return
    lines = page.get("lines", [])
    for line in lines[:LOG_LINES]:
        print(f"  | {line.get('line', '')}", flush=True)
    if len(lines) > LOG_LINES:
        print(f"  | … more: hopper logs {call_id}", flush=True)


def run(file: str, server: str | None, token: str | None) -> int:
    """Runs the loop until Ctrl-C; returns the exit code.

    Raises:
        UsageError: ``file`` is not there, or the temporary server did not start.
    """
    from .cli import UsageError

    file = os.path.abspath(file)
    if not os.path.isfile(file):
        raise UsageError(f"{file}: no such file")
    folder = os.path.dirname(file)
    data: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    # A stop from outside (a terminal closed, an IDE's stop button, `timeout`) ends the loop
    # as Ctrl-C does: the temporary server and its folder go too.
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    ignored = _own_output()
    try:
        if server is None:
            data = tempfile.mkdtemp(prefix="hopper-dev-")
            proc, server = _start_server(data)
            where = f"a temporary server at {server}"
        else:
            where = server
        print(
            f"serving {file} on {where} (dashboard {server}/); edits deploy again; Ctrl-C stops", flush=True
        )
        client = Client(server, token)
        since = datetime.datetime.now(datetime.timezone.utc).isoformat()
        last = _fingerprint(folder, ignored)
        app = _deploy(file, server, token)
        seen: set[str] = set()
        while True:
            time.sleep(POLL_SECONDS)
            if proc is not None and proc.poll() is not None:
                # Its own server is gone (killed, out of memory): nothing can run, so say so
                # and stop rather than retry forever.
                print(f"the temporary server stopped (exit code {proc.returncode}); stopping", flush=True)
                return 1
            now = _fingerprint(folder, ignored)
            if now != last:
                # Let an editor finish saving (several files, or a write then a rename).
                time.sleep(POLL_SECONDS)
                now = _fingerprint(folder, ignored)
                changed = _changed(last, now)
                last = now
                shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
                print(f"{shown} changed: deploying again", flush=True)
                app = _deploy(file, server, token) or app
            if app is None:
                continue
            try:
                page = client._send(
                    _Req("GET", "/v1/calls", params={"app": app, "since": since, "limit": 100})
                )
            except Error as e:
                print(f"cannot list the calls: {e}", flush=True)
                continue
            for call in reversed(page.get("calls", [])):
                if call.get("state") in _TERMINAL and call.get("id") not in seen:
                    seen.add(str(call.get("id")))
                    _show(client, call)
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)
