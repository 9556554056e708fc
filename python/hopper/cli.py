"""``python -m hopper``: deploy, manifest, run and bench; every other command of the ``hopper``
binary (``serve``, ``worker``, ``spawn``, ``get``, ...) is handed to the binary that came with
this package.

Exit codes follow the ``hopper`` CLI: 0 success, 1 the call failed, 2 bad usage or anything
the server refused (a deploy, a missing token), 3 timed out, 4 the server could not be reached
or failed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from . import _deploy, _snapshot
from .client import Client
from .exception import (
    AuthError,
    ConnectionError,
    DeployError,
    Error,
    InvalidInputError,
    NotFoundError,
    ServerError,
)


class UsageError(Error):
    """The command cannot run as given (exit code 2)."""


#: The ``hopper`` binary's commands that ``python -m hopper`` hands to it.
BINARY_COMMANDS = frozenset(
    {
        "serve",
        "worker",
        "spawn",
        "get",
        "map",
        "results",
        "cancel",
        "calls",
        "logs",
        "apps",
        "schedules",
        "secrets",
        "workers",
    }
)


def _installed_binary() -> str | None:
    """The ``hopper`` binary pip installed with this package, if there: in the scripts folder
    of the scheme whose site-packages holds the package (the user's for ``pip install
    --user``), else of this interpreter's default scheme (an editable install)."""
    import sysconfig

    site = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    schemes = [sysconfig.get_default_scheme(), f"{os.name}_user"]
    folders = [
        sysconfig.get_path("scripts", scheme)
        for scheme in schemes
        if scheme in sysconfig.get_scheme_names()
        and site in (sysconfig.get_path("purelib", scheme), sysconfig.get_path("platlib", scheme))
    ]
    folders.append(sysconfig.get_path("scripts"))
    for folder in folders:
        candidate = os.path.join(folder, "hopper")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_binary() -> str:
    """The ``hopper`` binary: ``$HOPPER_BIN``, else the one installed with this package, else
    ``hopper`` on ``PATH``.

    Raises:
        UsageError: none exists.
    """
    env = os.environ.get("HOPPER_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise UsageError(f"HOPPER_BIN={env} is not an executable file")
        return env
    found = _installed_binary() or shutil.which("hopper")
    if found is None:
        raise UsageError(
            "cannot find the hopper binary: install the package from a wheel "
            "(pip install hopper-queue), put hopper on PATH or set HOPPER_BIN to its path"
        )
    return found


def _python_file(path: str) -> str:
    """``path``, checked to be a file this command can import.

    Raises:
        UsageError: it is not there, or it is a folder.
    """
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder: give the Python file that defines the app (app.py)")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    return path


def _deploy_cmd(args: argparse.Namespace) -> int:
    _python_file(args.file)
    client = Client(args.server, args.token)
    try:
        version = client.deploy(args.file, snapshot=not args.no_snapshot, max_bundle=args.max_bundle)
    except _snapshot.SnapshotTooLarge as e:
        raise UsageError(f"{e} or raise --max-bundle") from None
    except _snapshot.SnapshotError as e:
        raise UsageError(str(e)) from None
    names = [f["name"] for f in version.get("functions", [])]
    shipped = version.get("snapshot")
    code = (
        f"code {shipped['hash'][7:19]} ({shipped['files']} file{'' if shipped['files'] == 1 else 's'})"
        if shipped
        else "no snapshot: workers run the files in its folder on their own machine"
    )
    print(f"deployed app {version.get('name')} version {version.get('version')} to {client.server}; {code}")
    for name in names:
        print(f"  {name}")
    return 0


def _manifest_cmd(args: argparse.Namespace) -> int:
    app = _deploy.load_app(_python_file(args.file))
    sys.stdout.write(_deploy.manifest(app, args.file, absolute_workdir=args.absolute_workdir))
    return 0


def _run_cmd(args: argparse.Namespace) -> int:
    app = _deploy.load_app(_python_file(args.file))
    # The temporary server's workers run the file where it is, with no code snapshot.
    text = _deploy.manifest(app, args.file, absolute_workdir=True, sdk=_deploy.sdk_path(app, snapshot=False))
    if args.function not in app.functions:
        close = difflib.get_close_matches(args.function, list(app.functions), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(
            f"{args.file} has no function {args.function!r} ({hint}it has: {', '.join(app.functions)})"
        )
    try:
        json.loads(args.input, parse_constant=_no_constant)
    except ValueError as e:
        raise InvalidInputError(f"the input is not JSON: {e} (strings need quotes: '\"text\"')") from None
    binary = find_binary()
    with tempfile.TemporaryDirectory(prefix="hopper-run-") as tmp:
        path = os.path.join(tmp, "hopper.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        cmd = [binary, "run", path, args.function, "--input", args.input]
        if args.timeout:
            cmd += ["--timeout", args.timeout]
        if args.json:
            cmd.append("--json")
        return subprocess.call(cmd)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _size(text: str) -> int:
    """``64MiB``, ``512KiB``, ``1GiB`` or plain bytes."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "": 1}
    number = text.rstrip("KMGiB")
    unit = text[len(number) :]
    if unit not in units or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (expected e.g. 64MiB)")
    return int(number) * units[unit]


def _dev_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hopper serve",
        description="Serve a Python app while you write it: deploy it, deploy it again on every "
        "save, and print each call that ends with its logs. Without a .py file, `python -m hopper "
        "serve` runs the hopper server itself.",
    )
    p.add_argument("file", help="the app's Python file")
    p.add_argument(
        "--server", help="deploy to this server (default: a temporary server of its own, stopped on exit)"
    )
    p.add_argument("--token", help="bearer token for --server (default $HOPPER_TOKEN)")
    return p


def _dev_cmd(args: argparse.Namespace) -> int:
    from ._dev import run

    _python_file(args.file)
    token = args.token or (os.environ.get("HOPPER_TOKEN") if args.server else None)
    return run(args.file, args.server, token)


def _bench_cmd(args: argparse.Namespace) -> int:
    from ._bench import run

    return run(args)


def parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="python -m hopper",
        description="Deploy, run and serve Python apps on Hopper.",
        epilog="python -m hopper serve FILE.py serves an app while you write it. The hopper "
        "binary's commands run through it too: "
        + ", ".join(sorted(BINARY_COMMANDS))
        + " (python -m hopper serve --help).",
    )
    p.add_argument("--version", action="version", version=f"hopper-queue {__version__} (python -m hopper)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("deploy", help="deploy the app defined in a Python file")
    d.add_argument("file")
    d.add_argument("--server", help="server URL (default $HOPPER_SERVER or http://127.0.0.1:7433)")
    d.add_argument("--token", help="bearer token (default $HOPPER_TOKEN)")
    d.add_argument(
        "--max-bundle",
        type=_size,
        default=None,
        help="most bytes of files the code snapshot may hold, e.g. 64MiB (the default)",
    )
    d.add_argument(
        "--no-snapshot",
        action="store_true",
        help="ship no code: workers run the files in the app's folder on their own machine",
    )
    d.set_defaults(func=_deploy_cmd)

    m = sub.add_parser("manifest", help="print the TOML manifest that deploy would send")
    m.add_argument("file")
    m.add_argument(
        "--absolute-workdir",
        action="store_true",
        help="write workdir as an absolute path (for a manifest kept elsewhere)",
    )
    m.set_defaults(func=_manifest_cmd)

    r = sub.add_parser("run", help="run one call on a temporary server, print the output, exit")
    r.add_argument("file")
    r.add_argument("function")
    r.add_argument("input", nargs="?", default="null", help="the input as JSON (default null)")
    r.add_argument("--timeout", help="give up after this long, e.g. 30s (exit 3)")
    r.add_argument("--json", action="store_true", help="print the whole call as JSON")
    r.set_defaults(func=_run_cmd)

    b = sub.add_parser("bench", help="measure map throughput and .remote() latency")
    b.add_argument("--inputs", type=int, default=100_000, help="inputs per map (default 100000)")
    b.add_argument("--round-trips", type=int, default=1_000, help="sequential .remote() calls (default 1000)")
    b.add_argument("--json", action="store_true", help="one JSON object per measurement")
    b.add_argument(
        "--no-reference", action="store_true", help="skip `hopper bench --scenario latency` for comparison"
    )
    b.set_defaults(func=_bench_cmd)
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code. A command of the ``hopper`` binary
    (:data:`BINARY_COMMANDS`) replaces this process with the binary."""
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["serve"] and any(a.endswith(".py") for a in given[1:]):
        return _guarded(lambda: _dev_cmd(_dev_parser().parse_args(given[1:])))
    if given[:1] == ["serve"] and any(a in ("-h", "--help") for a in given[1:]):
        # Both forms: the development loop's, then the server's own.
        _dev_parser().print_usage()
        print()
    # A manifest (hopper.toml) is the binary's to deploy, run or read.
    manifest = len(given) > 1 and given[0] in ("deploy", "run") and given[1].endswith(".toml")
    if given and (given[0] in BINARY_COMMANDS or manifest):
        try:
            binary = find_binary()
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(binary, [binary, *given])
    args = parser().parse_args(argv)
    return _guarded(lambda: args.func(args))


def _guarded(command: Callable[[], int]) -> int:
    """Runs a command, turning the SDK's errors into messages and exit codes."""
    try:
        return command()
    except DeployError as e:
        print(f"error: the app was refused:\n{e}", file=sys.stderr)
        return 2
    except (InvalidInputError, AuthError, NotFoundError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConnectionError, ServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
