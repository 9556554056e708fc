"""`python -m hopper deploy | manifest | run`, and what deploy refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Server, hopper_bin, run_python, start_server

SHOP = REPO / "examples" / "python" / "shop.py"


def write(folder: Path, source: str, name: str = "app.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def test_manifest_prints_the_toml_deploy_sends(tmp_path: Path) -> None:
    r = run_python("-m", "hopper", "manifest", str(SHOP))
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert 'app = "shop"' in text
    assert "[functions.resize]" in text
    assert f'serve = ["{sys.executable}", "-m", "hopper._runner", "shop.py", "resize"]' in text
    assert 'timeout = "1m"' in text and "retries = 3" in text and "concurrency = 8" in text
    assert 'batch = { max_size = 32, wait = "50ms" }' in text and "max_workers = 4" in text
    assert '[functions."Model.predict"]' in text and "min_workers = 1" in text
    assert 'cron = "0 3 * * *"' in text and 'timezone = "Europe/Berlin"' in text
    assert 'every = "15m"' in text
    if sys.version_info >= (3, 11):
        import tomllib

        parsed = tomllib.loads(text)
        assert set(parsed["functions"]) == {"resize", "embed", "Model.predict", "nightly", "refresh"}
        assert parsed["schedules"]["refresh"] == {"function": "refresh", "every": "15m"}


def test_a_generated_manifest_is_accepted_by_hopper_deploy(tmp_path: Path, server: Server) -> None:
    import subprocess

    app = write(
        tmp_path,
        """
        import hopper
        app = hopper.App("handmade")
        @app.function(timeout=30, retries=hopper.Retries(2), env={"A": "b c"}, concurrency=2)
        def f(x):
            return x
    """,
    )
    r = run_python("-m", "hopper", "manifest", "--absolute-workdir", str(app))
    manifest = tmp_path / "hopper.toml"
    manifest.write_text(r.stdout)
    out = subprocess.run(
        [hopper_bin(), "deploy", str(manifest), "--server", server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert server.client().function("handmade.f").remote("same") == "same"
    # `python -m hopper deploy` of a manifest hands it to the binary, as `hopper deploy` would.
    again = run_python(
        "-m", "hopper", "deploy", str(manifest), "--server", server.url, env={"HOPPER_BIN": hopper_bin()}
    )
    assert again.returncode == 0 and "deployed handmade version 2" in again.stdout, (
        again.stdout + again.stderr
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            """
            import hopper
            app = hopper.App("one")
            other = hopper.App("two")
            @app.function()
            def f(x): return x
            """,
            ["two apps in one process", "'one' at", "app.py:3", "'two' at", "app.py:4"],
        ),
        (
            """
            import hopper
            app = hopper.App("dup")
            @app.function()
            def f(x): return x

            @app.function()
            def f(x): return x + 1
            """,
            ["function 'f' is defined twice", "app.py:7", "also at", "app.py:4"],
        ),
        (
            """
            import hopper
            app = hopper.App("batchy")
            @app.function(batch=hopper.Batch(max_size=8))
            def embed(text: str) -> list[float]:
                return [1.0]
            """,
            ["app.py:4", "batched function 'embed' must take one list and return a list", "(text: str)"],
        ),
        (
            """
            import hopper
            app = hopper.App("batchy2")
            @app.function(batch=hopper.Batch(max_size=8))
            def embed(texts: list[str], model) -> list[float]:
                return [1.0]
            """,
            ["app.py:4", "batched function 'embed'"],
        ),
        (
            """
            import hopper
            app = hopper.App("sched")
            @app.function(schedule=hopper.Period("1h"))
            def report(day: str):
                return day
            """,
            ["app.py:4", "function 'report' has a schedule but needs an argument (day)"],
        ),
        (
            """
            import hopper
            app = hopper.App("badcron")


            @app.function(schedule=hopper.Cron("61 * * * *"))
            def nightly():
                pass
            """,
            # What the manifest's check finds points at the decorator, not the manifest.
            ["app.py:6: schedules.nightly.cron: invalid cron expression", "61 is out of range"],
        ),
    ],
    ids=["two-apps", "defined-twice", "batch-not-list", "batch-two-args", "schedule-argument", "bad-cron"],
)
def test_deploy_refuses(tmp_path: Path, source: str, expected: list[str]) -> None:
    app = write(tmp_path, source)
    # Found before a server is asked: none listens at the address given.
    r = run_python(
        "-m", "hopper", "deploy", str(app), env={"HOPPER_SERVER": "127.0.0.1:9", "HOPPER_BIN": hopper_bin()}
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    for text in expected:
        assert text in r.stderr, (text, r.stderr)
    assert "(manifest)" not in r.stderr, r.stderr


def test_deploy_reports_an_import_error(tmp_path: Path, server: Server) -> None:
    app = write(tmp_path, "import hopper\napp = hopper.App('x')\nraise ValueError('broken')\n")
    r = run_python("-m", "hopper", "deploy", str(app), env={"HOPPER_SERVER": server.url})
    assert r.returncode == 2
    assert "importing it failed" in r.stderr and "ValueError: broken" in r.stderr


def test_deploy_reports_an_unreachable_server(tmp_path: Path) -> None:
    app = write(tmp_path, "import hopper\napp = hopper.App('x')\n@app.function()\ndef f(x): return x\n")
    r = run_python("-m", "hopper", "deploy", str(app), env={"HOPPER_SERVER": "127.0.0.1:9"})
    assert r.returncode == 4
    assert "cannot reach the Hopper server at http://127.0.0.1:9" in r.stderr


def test_run_starts_a_temporary_server_for_one_call(tmp_path: Path) -> None:
    app = write(
        tmp_path,
        """
        import hopper
        app = hopper.App("runner")
        @app.function()
        def greet(name: str) -> dict:
            print("greeting", name)
            return {"hello": name}

        def check(name):
            raise ValueError(f"{name} is not a name")

        @app.function()
        def strict(name: str) -> dict:
            check(name)
    """,
    )
    r = run_python(
        "-m", "hopper", "run", str(app), "greet", '"world"', env={"HOPPER_BIN": hopper_bin()}, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"hello": "world"}
    assert "greeting world" in r.stderr
    # A failure says where, once: the function's own frames, in its log.
    failed = run_python("-m", "hopper", "run", str(app), "strict", '"42"', env={"HOPPER_BIN": hopper_bin()})
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.count(", in check") == 1 and "_runner.py" not in failed.stderr, failed.stderr
    assert "failed after 1 attempt: ValueError: 42 is not a name" in failed.stderr, failed.stderr
    # `hopper get` shows no logs: the error carries the traceback.
    server = start_server(tmp_path / "data")
    try:
        deployed = run_python("-m", "hopper", "deploy", str(app), "--server", server.url)
        assert deployed.returncode == 0, deployed.stderr
        call = server.client().function("runner.strict").spawn("42")
        got = subprocess.run(
            [hopper_bin(), "get", call.object_id, "--server", server.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 1 and got.stderr.count(", in check") == 1, got.stderr
        assert got.stderr.index("ValueError: 42 is not a name") < got.stderr.index(", in check"), got.stderr
    finally:
        server.stop()
    bad = run_python("-m", "hopper", "run", str(app), "nope", env={"HOPPER_BIN": hopper_bin()})
    assert bad.returncode == 2 and "has no function 'nope'" in bad.stderr


def test_notify_rules_reach_the_manifest_and_the_server(tmp_path: Path, server: Server) -> None:
    app = write(
        tmp_path,
        """
        import hopper
        app = hopper.App("notifying")
        app.notify(on=["failed", "recovered"], functions=["f"], webhook="http://127.0.0.1:9/hook", quiet="1m")
        app.notify(email="ops@example.com")
        @app.function
        def f(x):
            return x
    """,
    )
    r = run_python("-m", "hopper", "manifest", str(app))
    assert r.returncode == 0, r.stderr
    assert (
        '[[notify]]\non = ["failed", "recovered"]\nfunctions = ["f"]\nwebhook = "http://127.0.0.1:9/hook"'
        in r.stdout
    )
    assert 'quiet = "1m"' in r.stdout or 'quiet = "60s"' in r.stdout
    assert 'on = ["failed", "timed_out"]\nemail = ["ops@example.com"]' in r.stdout
    r = run_python("-m", "hopper", "deploy", str(app), env={"HOPPER_SERVER": server.url})
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on": ["exploded"], "webhook": "http://x/"}, "unknown event 'exploded'"),
        ({"on": [], "webhook": "http://x/"}, "no event"),
        ({"on": ["failed"]}, "needs a channel"),
    ],
)
def test_notify_refuses_a_rule_without_event_or_channel(kwargs: dict[str, Any], message: str) -> None:
    import hopper

    app = hopper.App("refusing")
    try:
        with pytest.raises(ValueError, match=message):
            app.notify(**kwargs)
    finally:
        hopper.App._all.remove(app)


def test_a_secret_reaches_the_function_and_an_unknown_one_is_refused(
    tmp_path: Path, server: Server, deploy: Any
) -> None:
    import hashlib
    import subprocess

    import hopper

    name = f"py-secret-{tmp_path.name[-6:].lower().replace('_', '-')}"
    value = "tok_9c1f44e07ab2"
    source = f"""
        import hashlib, os

        @app.function(secrets=[hopper.Secret.from_name({name!r})], env={{"PLAIN": "p"}})
        def whoami(x):
            return [hashlib.sha256(os.environ["API_TOKEN"].encode()).hexdigest(), os.environ["PLAIN"]]
    """
    # Before the secret exists, deploy is refused and names it.
    app = write(tmp_path, "import hopper\napp = hopper.App('secretive')\n" + textwrap.dedent(source))
    r = run_python("-m", "hopper", "deploy", str(app), env={"HOPPER_SERVER": server.url})
    assert r.returncode != 0 and f'"{name}"' in r.stderr, r.stderr
    out = subprocess.run(
        [hopper_bin(), "secrets", "set", name, f"API_TOKEN={value}", "--server", server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    deployed = deploy(source)
    digest, plain = deployed.fn("whoami").remote(None)
    assert digest == hashlib.sha256(value.encode()).hexdigest() and plain == "p"
    assert f'secrets = ["{name}"]' in run_python("-m", "hopper", "manifest", str(deployed.file)).stdout
    assert value not in json.dumps(server.get("/v1/functions/" + deployed.app + ".whoami"))
    with pytest.raises(ValueError, match="secret's name"):
        hopper.Secret.from_name("Stripe Keys")


def test_a_deploy_ships_the_apps_folder_so_an_edit_waits_for_the_next_deploy(
    tmp_path: Path, server: Server
) -> None:
    import hopper

    folder = tmp_path / "shipped"
    folder.mkdir()
    app = write(
        folder,
        """
        import pathlib
        import hopper
        app = hopper.App("shipped")
        @app.function
        def read(x):
            return (pathlib.Path(__file__).parent / "data.txt").read_text()
    """,
    )
    (folder / "data.txt").write_text("one")
    (folder / "notes.log").write_text("left out")
    (folder / ".hopperignore").write_text("*.log\n")
    env = {"HOPPER_SERVER": server.url}
    r = run_python("-m", "hopper", "deploy", str(app), env=env)
    assert r.returncode == 0 and "code " in r.stdout and "(3 files)" in r.stdout, r.stdout + r.stderr
    read = hopper.Function.from_name("shipped.read", client=server.client())
    assert read.remote(None) == "one"
    (folder / "data.txt").write_text("two")
    assert read.remote(None) == "one", "an edit without a deploy changed a deployed version"
    r = run_python("-m", "hopper", "deploy", str(app), env=env)
    assert r.returncode == 0, r.stderr
    assert read.remote(None) == "two"
    spec = server.get("/v1/functions/shipped.read")["spec"]
    assert spec["snapshot"].startswith("sha256:") and spec["workdir"] == "/"
    # A manifest whose workdir lies outside the shipped folder is refused, naming both.
    r = run_python("-m", "hopper", "manifest", "--absolute-workdir", str(app))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "hopper.toml").write_text(r.stdout)
    import subprocess

    out = subprocess.run(
        [hopper_bin(), "deploy", str(elsewhere / "hopper.toml"), "--server", server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "is outside" in out.stderr and "root" in out.stderr, out.stderr
    # A server's data folder inside the app's never travels; a link out of the folder is refused.
    (folder / "state").mkdir()
    (folder / "state" / "hopper.lock").write_text("")
    (folder / "state" / "secret.key").write_text("00")
    r = run_python("-m", "hopper", "deploy", str(app), env=env)
    assert r.returncode == 0 and "(3 files)" in r.stdout, r.stdout + r.stderr
    (folder / "host").symlink_to("/etc/hostname")
    r = run_python("-m", "hopper", "deploy", str(app), env=env)
    assert r.returncode == 2 and "host is a link to /etc/hostname, outside" in r.stderr, r.stderr
    (folder / "host").unlink()
    # Over the limit: refused before anything is sent, naming the file.
    (folder / "big.bin").write_bytes(b"x" * 300_000)
    r = run_python("-m", "hopper", "deploy", str(app), "--max-bundle", "100KiB", env=env)
    assert r.returncode == 2 and "big.bin (0.3 MiB)" in r.stderr, r.stderr


def test_a_project_with_a_venv_and_tool_folders_deploys_without_them(tmp_path: Path, server: Server) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    app = write(
        folder,
        """
        import hopper
        app = hopper.App("tidy")
        @app.function
        def f(x):
            return x
    """,
    )
    # The layout `python -m venv .venv` leaves, and no .gitignore: its python is a link out.
    for venv in (".venv", "any-name"):
        (folder / venv / "bin").mkdir(parents=True)
        (folder / venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
        (folder / venv / "bin" / "python3").symlink_to(sys.executable)
    for tool in (
        "node_modules/pad",
        "__pycache__",
        ".git",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
    ):
        (folder / tool).mkdir(parents=True)
        (folder / tool / "file").write_text("x")
    env = {"HOPPER_SERVER": server.url}
    r = run_python("-m", "hopper", "deploy", str(app), env=env)
    assert r.returncode == 0 and "(1 file)" in r.stdout, r.stdout + r.stderr
    # A negation in the folder's .hopperignore ships one anyway.
    (folder / ".hopperignore").write_text("!node_modules/\n")
    r = run_python("-m", "hopper", "deploy", str(app), env=env)
    assert r.returncode == 0 and "(3 files)" in r.stdout, r.stdout + r.stderr
    # A link out of the folder: the advice to leave it out comes first, with the line to write.
    (folder / ".hopperignore").write_text("!node_modules/\n!any-name/\n")
    r = run_python("-m", "hopper", "deploy", str(app), env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "any-name/bin/python3 is a link to" in r.stderr, r.stderr
    assert r.stderr.index("Leave it out with a line '/any-name/bin/python3'") < r.stderr.index("copy what"), (
        r.stderr
    )
    # A link that climbs out and back in is refused here too, as the server would refuse it.
    (folder / ".hopperignore").write_text("")
    (folder / "inlink").symlink_to("../project/node_modules")
    r = run_python("-m", "hopper", "deploy", str(app), env=env)
    assert r.returncode == 2 and "inlink is a link to ../project/node_modules" in r.stderr, (
        r.stdout + r.stderr
    )


@pytest.mark.parametrize("hopper_python", [False, True])
def test_requirements_run_with_the_sdk_the_deploy_used_from_a_virtualenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hopper_python: bool
) -> None:
    import shutil
    import subprocess

    from conftest import start_server

    # A virtualenv holding an SDK the machine's interpreter does not have: a marked copy. (The
    # machine's interpreter has the SDK too in CI; the mark tells the copies apart.)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shutil.copytree(
        REPO / "python" / "hopper", Path(site) / "hopper", ignore=shutil.ignore_patterns("__pycache__")
    )
    init = Path(site) / "hopper" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.1.0+venv"'))
    if hopper_python:
        monkeypatch.setenv("HOPPER_PYTHON", str(python))
    server = start_server(tmp_path / "data")
    try:
        folder = tmp_path / "project"
        folder.mkdir()
        app = write(
            folder,
            """
            import hopper
            app = hopper.App("venvdeps", requirements=["six==1.16.0"])
            @app.function
            def where(x):
                import six
                return [hopper.__version__, hopper.__file__, six.__version__]
        """,
        )
        # The virtualenv's own SDK deploys (not one a PYTHONPATH would put first).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        r = subprocess.run(
            [str(python), "-m", "hopper", "deploy", str(app), "--server", server.url],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert r.returncode == 0 and "(1 file)" in r.stdout, r.stdout + r.stderr
        import hopper

        where = hopper.Function.from_name("venvdeps.where", client=server.client())
        version, file, six_version = where.remote(None)
        assert version == "0.1.0+venv", file
        assert f"/{'.hopper/sdk'}/hopper/__init__.py" in file, file
        assert six_version == "1.16.0"
        # Without a snapshot (deploy --no-snapshot, run: the workers run this machine's files)
        # the functions import a copy of the same SDK, kept in the user's cache.
        env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
        r = subprocess.run(
            [str(python), "-m", "hopper", "deploy", "--no-snapshot", str(app), "--server", server.url],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert r.returncode == 0 and "no snapshot" in r.stdout, r.stdout + r.stderr
        version, file, six_version = where.remote(None)
        assert version == "0.1.0+venv" and six_version == "1.16.0", file
        assert file.startswith(str(tmp_path / "cache" / "hopper" / "sdk")), file
        r = subprocess.run(
            [str(python), "-m", "hopper", "run", str(app), "where", "null"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "0.1.0+venv" in r.stdout and "1.16.0" in r.stdout, r.stdout + r.stderr
    finally:
        server.stop()


def test_serve_a_python_file_deploys_it_on_every_save_and_prints_the_calls(tmp_path: Path) -> None:
    import os
    import re
    import signal
    import subprocess
    import threading
    import time

    import httpx

    import hopper

    folder = tmp_path / "devloop"
    folder.mkdir()
    source = """
        import hopper
        app = hopper.App("devloop")
        @app.function
        def times(x):
            print("computing", x)
            return x * FACTOR
    """
    app = write(folder, source.replace("FACTOR", "1"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hopper", "serve", str(app)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HOPPER_BIN": hopper_bin()},
        cwd=tmp_path,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: lines.extend(stdout), daemon=True).start()

    def wait_for_line(pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in list(lines):
                found = re.search(pattern, line)
                if found:
                    return found
            time.sleep(0.1)
        raise AssertionError(f"no line matches {pattern!r}:\n{''.join(lines)}")

    try:
        url = wait_for_line(r"on a temporary server at (http://127\.0\.0\.1:\d+)").group(1)
        wait_for_line(r"deployed app devloop version 1")
        times = hopper.Function.from_name("devloop.times", client=hopper.Client(server=url))
        assert times.remote(3) == 3
        wait_for_line(r"devloop\.times hc-\S+ succeeded: 3$")
        wait_for_line(r"\| computing 3")
        # A save deploys again: the next call runs the new code.
        write(folder, source.replace("FACTOR", "10"))
        wait_for_line(r"deployed app devloop version 2")
        assert times.remote(3) == 30
        wait_for_line(r"succeeded: 30$")
        # A save that breaks the app is reported, and the loop goes on.
        write(
            folder, source.replace("FACTOR", "10").replace("@app.function", "@app.function(timeout='soon')")
        )
        wait_for_line(r"refused|error")
        assert proc.poll() is None, "".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
    assert code == 0, "".join(lines)
    # Its temporary server stopped with it.
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/healthz", timeout=2)


def test_serve_with_its_output_in_the_folder_deploys_once_and_stops_on_sigterm(tmp_path: Path) -> None:
    import re
    import signal
    import time

    import httpx

    folder = tmp_path / "devlog"
    folder.mkdir()
    app = write(folder, 'import hopper\napp = hopper.App("devlog")\n@app.function\ndef f(x):\n    return x\n')
    # `python -m hopper serve app.py > serve.log` in the project folder: its own output must
    # not count as an edit.
    log = folder / "serve.log"
    with open(log, "w") as out:
        proc = _dev_loop(app, out, log, cwd=folder)
        try:
            time.sleep(3)  # six looks at the folder
            text = log.read_text()
            assert "deployed app devlog version 1" in text and "changed" not in text, text
            url = re.search(r"temporary server at (http://\S+) ", text)
            assert url is not None, text
        finally:
            # A stop from outside (an IDE's stop button, `timeout`): the server goes too.
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(20)
    assert code == 0, log.read_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(url.group(1) + "/healthz", timeout=2)


def _dev_loop(app: Path, out: Any, log: Path, cwd: Path) -> Any:
    """``python -m hopper serve APP`` with its output to ``out`` (the file ``log``), once it
    has deployed the app (30 s at most)."""
    import subprocess
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "hopper", "serve", str(app)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HOPPER_BIN": hopper_bin()},
        cwd=cwd,
    )
    deadline = time.monotonic() + 30
    while "version 1" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc


def test_serve_stops_and_says_so_when_its_server_is_killed(tmp_path: Path) -> None:
    import signal

    folder = tmp_path / "devkill"
    folder.mkdir()
    source = 'import hopper\napp = hopper.App("devkill")\n@app.function\ndef f(x):\n    return x\n'
    app = write(folder, source)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = _dev_loop(app, out, log, cwd=tmp_path)
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            servers = [c for c in children if b"serve" in Path(f"/proc/{c}/cmdline").read_bytes()]
            assert len(servers) == 1, children
            os.kill(int(servers[0]), signal.SIGKILL)  # its server, out of memory say
            code = proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 1 and "the temporary server stopped (exit code -9); stopping" in text, text


def test_app_requirements_reach_the_manifest_and_the_environment_runs_python3(tmp_path: Path) -> None:
    app = write(
        tmp_path,
        """
        import hopper
        app = hopper.App("withdeps", requirements=["six==1.16.0", "tabulate>=0.9"])
        @app.function
        def f(x):
            return x
    """,
    )
    r = run_python("-m", "hopper", "manifest", str(app))
    assert r.returncode == 0, r.stderr
    assert 'serve = ["python3", "-m", "hopper._runner", "app.py", "f"]' in r.stdout
    # What the SDK needs comes with them.
    assert (
        'python = { requirements = ["six==1.16.0", "tabulate>=0.9", "httpx>=0.25,<1", "pathspec>=0.11,<2"] }'
        in (r.stdout)
    )
    import hopper

    with pytest.raises(ValueError, match="one requirement"):
        hopper.App("bad-reqs", requirements=["six\ntabulate"])
