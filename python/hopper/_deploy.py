"""From a Python file to a deployed app: import the file, check its app, build the manifest
(TOML text, the same shape a person would write) and send it to ``POST /v1/apps``."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import typing
from typing import Any

from ._durations import format_ms, to_ms
from ._frames import user_traceback
from .app import App, FunctionDef
from .exception import DeployError
from .options import Cron, Period, Retries

RUNNER_MODULE = "hopper._runner"
#: Where a code snapshot carries this SDK for functions with requirements: first on their
#: ``PYTHONPATH`` (relative to the snapshot's root, the app's folder), so the environment a
#: worker builds imports the SDK the deploy used, whatever interpreter or virtualenv it was in.
SDK_DIR = ".hopper/sdk"
#: What the SDK needs installed, added to an app's requirements unless the app names them
#: (keep in step with ``pyproject.toml``).
SDK_REQUIREMENTS = ("httpx>=0.25,<1", "pathspec>=0.11,<2")


def _display(path: str) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def import_file(path: str) -> Any:
    """Imports the Python file at ``path`` as a module named for its stem (its folder first
    on ``sys.path``), once."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise DeployError([f"{path}: no such file"])
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(path))[0]
    existing = sys.modules.get(name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == path:
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DeployError([f"{path}: not a Python file"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        text = user_traceback(e)
        raise DeployError([f"{_display(path)}: importing it failed:\n{text.rstrip()}"]) from e
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_app(path: str) -> App:
    """The one :class:`App` defined by importing ``path``.

    Raises:
        DeployError: the file defines no app, or more than one app exists in this process.
    """
    path = os.path.abspath(path)
    import_file(path)
    apps = App._all
    if not apps:
        raise DeployError([f'{_display(path)}: defines no hopper.App (app = hopper.App("name"))'])
    if len(apps) > 1:
        where = ", ".join(f"{a.name!r} at {_display(a.file)}:{a.line}" for a in apps)
        raise DeployError([f"{_display(path)}: two apps in one process ({where}): deploy one app per file"])
    return apps[0]


def _is_list_type(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty:
        return True  # not annotated: checked at run time
    if isinstance(annotation, str):
        text = annotation.replace("typing.", "").strip()
        return text in ("list", "List", "Sequence") or text.startswith(
            ("list[", "List[", "Sequence[", "collections.abc.Sequence[")
        )
    origin = typing.get_origin(annotation) or annotation
    import collections.abc

    return origin in (list, collections.abc.Sequence, typing.List, typing.Sequence)  # noqa: UP006


def check(app: App) -> list[str]:
    """Every reason to refuse ``app`` at deploy, each naming the function and ``file:line``."""
    problems: list[str] = []
    for name, file, line in app.duplicates:
        first = app.functions[name]
        problems.append(
            f"{_display(file)}:{line}: function {name!r} is defined twice in app "
            f"{app.name!r} (also at {_display(first.file)}:{first.line}); give one of them "
            "another name (name=...)"
        )
    for fdef in app.functions.values():
        where = f"{_display(fdef.file)}:{fdef.line}"
        fn = fdef.raw
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            problems.append(
                f"{where}: function {fdef.name!r} is a generator; Hopper functions return "
                "one value (return a list instead)"
            )
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        params = list(sig.parameters.values())
        if fdef.cls is not None:
            params = params[1:]  # self
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required = [
            p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if fdef.options.batch is not None:
            hints = _hints(fn)
            ok = len(positional) >= 1 and len(required) <= 1
            if ok and required and required[0] is not positional[0]:
                ok = False
            param_type = hints.get(positional[0].name, positional[0].annotation) if ok else None
            return_type = hints.get("return", sig.return_annotation)
            if not ok or not _is_list_type(param_type) or not _is_list_type(return_type):
                problems.append(
                    f"{where}: batched function {fdef.name!r} must take one list and return "
                    f"a list of the same length (def {fdef.name}(items: list[X]) -> list[Y]), "
                    f"not {fdef.name}{sig}"
                )
        if fdef.options.schedule is not None and required:
            names = ", ".join(p.name for p in required)
            problems.append(
                f"{where}: function {fdef.name!r} has a schedule but needs an argument "
                f"({names}); a scheduled function is called with none"
            )
    return problems


def _hints(fn: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        return {}


_BARE_KEY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _key(name: str) -> str:
    return name if name and set(name) <= _BARE_KEY else _str(name)


def _str(text: str) -> str:
    """A TOML basic string."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _array(items: list[str]) -> str:
    return "[" + ", ".join(_str(i) for i in items) + "]"


_FAULT = re.compile(r"^.* \(manifest\):\d+:\d+: (?P<key>(?:functions|schedules)\.[^:]+): (?P<message>.*)$")


def _owner(app: App, key: str) -> FunctionDef[Any, Any] | None:
    """The function whose decorator wrote the manifest's ``key`` (``functions.NAME.…`` or
    ``schedules.NAME.…``, a name with dots in quotes)."""
    section, _, rest = key.partition(".")
    if rest.startswith('"'):
        name = rest[1:].partition('"')[0]
    else:
        name = rest.partition(".")[0]
    for fdef in app.functions.values():
        if (section == "functions" and fdef.name == name) or (
            section == "schedules" and fdef.options.schedule is not None and _schedule_name(fdef.name) == name
        ):
            return fdef
    return None


def at_decorators(app: App, faults: str) -> list[str] | None:
    """The server's faults of the manifest built from ``app``, each moved from its line in
    that manifest to the ``file:line`` of the decorator that made it; ``None`` when none is
    such a fault."""
    out: list[str] = []
    moved = False
    for line in faults.splitlines():
        found = _FAULT.match(line)
        fdef = _owner(app, found["key"]) if found else None
        if found is None or fdef is None:
            out.append(line)
            continue
        moved = True
        out.append(f"{_display(fdef.file)}:{fdef.line}: {found['key']}: {found['message']}")
    return out if moved else None


def check_locally(app: App, request: dict[str, str]) -> None:
    """Checks the manifest of a deploy ``request`` for ``app`` with the ``hopper`` binary
    (``hopper deploy --check``), so that its faults (a cron's fields, a time zone, bounds that
    contradict each other) are found before a server is asked, or needed. Without the binary,
    or with one too old to check, nothing is checked here: the server checks at deploy.

    Raises:
        DeployError: the manifest has faults, each moved to the decorator that made it.
    """
    import subprocess

    from .cli import find_binary

    try:
        binary = find_binary()
    except Exception:  # no binary: the server checks
        return
    with tempfile.TemporaryDirectory(prefix="hopper-check-") as tmp:
        # Named as the server names it, so its faults read the same and move to decorators.
        file = os.path.join(tmp, request["file"].replace(os.sep, "_"))
        with open(file, "w", encoding="utf-8") as f:
            f.write(request["manifest"])
        try:
            done = subprocess.run(
                [binary, "deploy", "--check", file], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError):
            return
        lines = [line.removeprefix("error: ") for line in done.stderr.splitlines()]
        faults = [line.replace(file, request["file"]) for line in lines if line.startswith(file + ":")]
    if done.returncode != 2 or not faults:
        return
    raise DeployError(at_decorators(app, "\n".join(faults)) or faults)


def _schedule_name(name: str) -> str:
    out = "".join(c if c.isalnum() or c in "_-" else "-" for c in name.lower())
    return out if out[:1].isalpha() else f"s-{out}"


def sdk_files() -> list[tuple[str, str]]:
    """This SDK's files as a code snapshot carries them: ``(path under SDK_DIR, path here)``."""
    package = os.path.dirname(os.path.abspath(__file__))
    out: list[tuple[str, str]] = []
    for folder, dirs, names in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith((".py", ".typed")):
                full = os.path.join(folder, name)
                relative = os.path.relpath(full, os.path.dirname(package)).replace(os.sep, "/")
                out.append((f"{SDK_DIR}/{relative}", full))
    return out


def local_sdk() -> str:
    """A folder holding a copy of this SDK alone (``<folder>/hopper/...``), for functions with
    requirements deployed without a code snapshot (``deploy --no-snapshot``, ``run``): their
    workers run on this machine's files, and the environment built from the requirements must
    import the SDK without seeing the rest of the interpreter or virtualenv it is installed in.

    Kept under ``$XDG_CACHE_HOME/hopper/sdk`` (``~/.cache`` by default), one folder per content
    of the SDK, written to a temporary folder first and renamed, so a copy is whole or absent.

    Raises:
        OSError: the cache folder cannot be written.
    """
    files = sdk_files()
    digest = hashlib.sha256()
    for shipped, here in files:
        with open(here, "rb") as f:
            digest.update(f"{shipped}\0".encode() + hashlib.sha256(f.read()).digest())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(cache, "hopper", "sdk")
    folder = os.path.join(root, digest.hexdigest()[:16])
    if os.path.isdir(folder):
        return folder
    os.makedirs(root, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".partial-", dir=root)
    try:
        for shipped, here in files:
            target = os.path.join(partial, shipped[len(SDK_DIR) + 1 :])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(here, target)
        os.rename(partial, folder)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not os.path.isdir(folder):  # another deploy's copy won the rename: use it
            raise
    return folder


def _project(requirement: str) -> str:
    """The project a requirement names, normalized (PEP 503): ``HTTPX[http2]>=1`` → ``httpx``."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", name.group(1)).lower() if name else ""


def requirements_with_sdk(requirements: list[str]) -> list[str]:
    """``requirements`` and what the SDK needs that they do not name."""
    named = {_project(r) for r in requirements}
    return [*requirements, *(r for r in SDK_REQUIREMENTS if _project(r) not in named)]


def manifest(app: App, file: str, *, absolute_workdir: bool = False, sdk: str | None = None) -> str:
    """The TOML manifest of ``app``, defined in ``file``: one ``serve`` function per function
    (the SDK's runner on the file), with its policy, and its schedules.

    A function with requirements runs in the environment a worker builds from them, which
    also gets what the SDK needs (:data:`SDK_REQUIREMENTS`); ``sdk`` is where the SDK is found
    there (:data:`SDK_DIR` when the code snapshot carries it), put first on ``PYTHONPATH``.

    Raises:
        DeployError: the app breaks a rule (see :func:`check`).
    """
    problems = check(app)
    if problems:
        raise DeployError(problems)
    file = os.path.abspath(file)
    folder = os.path.dirname(file)
    lines = [
        f"# Built by the Hopper Python SDK from {os.path.basename(file)} "
        f"(python -m hopper manifest {os.path.basename(file)})",
        f"app = {_str(app.name)}",
    ]
    for fdef in app.functions.values():
        lines.append("")
        lines.append(f"[functions.{_key(fdef.name)}]")
        # With requirements, the environment the worker builds puts its python3 first on PATH.
        python = "python3" if app.requirements else sys.executable
        argv = [python, "-m", RUNNER_MODULE, os.path.basename(file), fdef.name]
        lines.append(f"serve = {_array(argv)}")
        if absolute_workdir:
            lines.append(f"workdir = {_str(folder)}")
        if app.requirements:
            lines.append(f"python = {{ requirements = {_array(requirements_with_sdk(app.requirements))} }}")
        lines.extend(_policy(fdef, sdk if app.requirements else None))
    for fdef in app.functions.values():
        sched = fdef.options.schedule
        if sched is None:
            continue
        lines.append("")
        lines.append(f"[schedules.{_key(_schedule_name(fdef.name))}]")
        lines.append(f"function = {_str(fdef.name)}")
        if isinstance(sched, Cron):
            lines.append(f"cron = {_str(sched.cron_string)}")
            lines.append(f"timezone = {_str(sched.timezone)}")
        elif isinstance(sched, Period):
            lines.append(f'every = "{format_ms(sched.ms)}"')
    for rule in app.notifications:
        lines.append("")
        lines.append("[[notify]]")
        lines.append(f"on = {_array(rule.on)}")
        if rule.functions is not None:
            lines.append(f"functions = {_array(rule.functions)}")
        if rule.webhook is not None:
            lines.append(f"webhook = {_str(rule.webhook)}")
        if rule.email:
            lines.append(f"email = {_array(rule.email)}")
        if rule.quiet_ms is not None:
            lines.append(f'quiet = "{format_ms(rule.quiet_ms)}"')
    return "\n".join(lines) + "\n"


def _policy(fdef: FunctionDef[Any, Any], sdk: str | None = None) -> list[str]:
    o = fdef.options
    out: list[str] = []
    if o.timeout is not None:
        out.append(f'timeout = "{format_ms(to_ms(o.timeout, "timeout"))}"')
    if isinstance(o.retries, Retries):
        out.append(f"retries = {o.retries.toml()}")
    elif o.retries is not None:
        out.append(f"retries = {o.retries}")
    if o.concurrency is not None:
        out.append(f"concurrency = {o.concurrency}")
    if o.batch is not None:
        out.append(f"batch = {o.batch.toml()}")
    for key in ("min_workers", "max_workers", "buffer_workers"):
        value = getattr(o, key)
        if value is not None:
            out.append(f"{key} = {value}")
    if o.scaledown_window is not None:
        out.append(f'scaledown_window = "{format_ms(to_ms(o.scaledown_window, "scaledown"))}"')
    env = dict(o.env or {})
    if sdk is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (sdk, env.get("PYTHONPATH")) if p)
    if env:
        pairs = ", ".join(f"{_key(k)} = {_str(v)}" for k, v in sorted(env.items()))
        out.append(f"env = {{ {pairs} }}")
    if o.secrets:
        names = sorted({secret.name for secret in o.secrets})
        out.append(f"secrets = {_array(names)}")
    if o.priority is not None:
        out.append(f"priority = {o.priority}")
    if o.limits is not None:
        out.append(f"limits = {o.limits.toml()}")
    if isinstance(o.gpu, int):
        out.append(f"gpu = {o.gpu}")
    elif isinstance(o.gpu, str):
        out.append(f"gpu = {_str(o.gpu)}")
    elif o.gpu is not None:
        out.append(f"gpu = {_array(list(o.gpu))}")
    if o.cpu is not None:
        out.append(f"cpu = {float(o.cpu)!r}")
    if isinstance(o.memory, int):
        out.append(f"memory = {o.memory}")
    elif o.memory is not None:
        out.append(f"memory = {_str(o.memory)}")
    if o.labels:
        pairs = ", ".join(f"{_key(k)} = {_str(v)}" for k, v in sorted(o.labels.items()))
        out.append(f"labels = {{ {pairs} }}")
    return out


def sdk_path(app: App, snapshot: bool) -> str | None:
    """Where the functions of ``app`` import the SDK from when it has requirements: the copy a
    code snapshot carries, or without one :func:`local_sdk`; ``None`` without requirements."""
    if not app.requirements:
        return None
    return SDK_DIR if snapshot else local_sdk()


def deploy_request(path: str, *, snapshot: str | None = None) -> dict[str, str]:
    """The body of ``POST /v1/apps`` for the app in ``path``: run in the code snapshot
    ``snapshot`` (the file's folder, packed by :func:`hopper._snapshot.build` and stored
    first, with :func:`sdk_files` when the app has requirements), or without one from the
    file's folder on the workers' machines.

    Raises:
        DeployError: the file has no app, or its app breaks a rule.
    """
    path = os.path.abspath(path)
    app = load_app(path)
    body = {
        "manifest": manifest(app, path, sdk=sdk_path(app, snapshot is not None)),
        "file": f"{_display(path)} (manifest)",
        "base_dir": os.path.dirname(path),
    }
    if snapshot is not None:
        body["snapshot"] = snapshot
        body["snapshot_root"] = os.path.dirname(path)
    return body
