"""Apps and their functions: :class:`App`, ``@app.function``, ``@app.cls``, and the
``@enter``/``@exit``/``@method`` markers for classes."""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from ._durations import Duration, to_ms
from .options import Batch, Cron, Limits, Period, Retries, Secret

if TYPE_CHECKING:
    from .client import Client, Function

__all__ = ["App", "ClsDef", "FunctionDef", "batched", "enter", "exit", "method"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_APP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
#: An environment variable name a shell can export.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")

Schedule = Cron | Period | int | float
"""``schedule=``: a :class:`Cron`, a :class:`Period`, or a period in seconds."""

Gpu = int | str | Sequence[str]
"""``gpu=``: a count (``1``), a kind (``"A100"``, ``"H100:2"``, ``"any"``) or kinds in order of
preference (``["H100", "A100"]``)."""


_NOTIFY_EVENTS = ("failed", "timed_out", "schedule_missed", "recovered")


@dataclass
class Notify:
    """A notification rule of an app (see :meth:`App.notify`)."""

    on: list[str]
    webhook: str | None
    email: list[str]
    functions: list[str] | None
    quiet_ms: int | None


@dataclass
class FunctionOptions:
    """The policy of one function, as the decorator gave it (validated)."""

    timeout: Duration | None = None
    retries: int | Retries | None = None
    concurrency: int | None = None
    batch: Batch | None = None
    min_workers: int | None = None
    max_workers: int | None = None
    buffer_workers: int | None = None
    scaledown_window: Duration | None = None
    env: dict[str, str] = field(default_factory=dict)
    secrets: list[Secret] = field(default_factory=list)
    schedule: Cron | Period | None = None
    retry_on: tuple[type[BaseException], ...] | None = None
    no_retry_on: tuple[type[BaseException], ...] = ()
    limits: Limits | None = None
    priority: int | None = None
    gpu: Gpu | None = None
    cpu: float | None = None
    memory: int | str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Raises ``ValueError`` for a value no manifest could hold."""
        if self.timeout is not None:
            ms = to_ms(self.timeout, "timeout")
            if not 1_000 <= ms <= 86_400_000:
                raise ValueError("timeout must be from 1 second to 24 hours")
        if self.retries is not None and not isinstance(self.retries, Retries):
            if isinstance(self.retries, bool) or not isinstance(self.retries, int):
                raise ValueError(f"retries must be an int or hopper.Retries, not {self.retries!r}")
            Retries(self.retries)
        if self.concurrency is not None and not _int_in(self.concurrency, 1, 10_000):
            raise ValueError(f"concurrency must be an int from 1 to 10000, not {self.concurrency!r}")
        for name in ("min_workers", "max_workers", "buffer_workers"):
            value = getattr(self, name)
            if value is not None and not _int_in(value, 0, 1000):
                raise ValueError(f"{name} must be an int from 0 to 1000, not {value!r}")
        if self.scaledown_window is not None:
            to_ms(self.scaledown_window, "scaledown_window")
        for k, v in self.env.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(f"env: {k!r}={v!r} is not a valid variable (str names and values)")
            if not _ENV_NAME.fullmatch(k):
                raise ValueError(
                    f"env: {k!r} is not an environment variable name a shell can export: letters, "
                    "digits and _, not starting with a digit (e.g. API_KEY)"
                )
        for secret in self.secrets:
            if not isinstance(secret, Secret):
                raise ValueError(f"secrets: expected hopper.Secret.from_name(...), not {secret!r}")
        if self.limits is not None and not isinstance(self.limits, Limits):
            raise ValueError(f"limits: expected hopper.Limits(...), not {self.limits!r}")
        if self.priority is not None and not _int_in(self.priority, -1000, 1000):
            raise ValueError(f"priority must be an int from -1000 to 1000, not {self.priority!r}")
        gpu = self.gpu
        if gpu is not None and not (
            _int_in(gpu, 1, 64)
            or (isinstance(gpu, str) and gpu.strip())
            or (isinstance(gpu, (list, tuple)) and gpu and all(isinstance(k, str) and k.strip() for k in gpu))
        ):
            raise ValueError(
                'gpu must be a count from 1 to 64, a kind ("A100", "H100:2", "any") '
                f"or a list of kinds, not {gpu!r}"
            )
        cpu = self.cpu
        if cpu is not None and (
            isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not 0 < cpu <= 1024
        ):
            raise ValueError(f"cpu must be a number of cores more than 0 and at most 1024, not {cpu!r}")
        memory = self.memory
        if memory is not None and not (
            _int_in(memory, 1, 1 << 30) or (isinstance(memory, str) and memory.strip())
        ):
            raise ValueError(
                f'memory must be MiB as an int (4096, at most 1 PiB) or a size ("4GiB"), not {memory!r}'
            )
        for k, v in self.labels.items():
            if not isinstance(k, str) or not isinstance(v, str) or not k:
                raise ValueError(f"labels: {k!r}={v!r} is not a label (str names and values)")


def _labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """``labels`` as a dict; ``ValueError`` for anything but a mapping."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ValueError(f'labels must be a dict of names to values ({{"zone": "eu"}}), not {labels!r}')
    return dict(labels)


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _schedule(value: Schedule | None) -> Cron | Period | None:
    if value is None or isinstance(value, (Cron, Period)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Period(value)
    raise ValueError(f"schedule must be hopper.Cron, hopper.Period or seconds, not {value!r}")


def _exceptions(
    value: Iterable[type[BaseException]] | type[BaseException] | None, what: str
) -> tuple[type[BaseException], ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, type) else tuple(value)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"{what} takes exception classes, not {item!r}")
    return items


def _where(fn: Callable[..., Any]) -> tuple[str, int]:
    code = getattr(fn, "__code__", None)
    file = inspect.getsourcefile(fn) or "<unknown>"
    return file, code.co_firstlineno if code is not None else 0


class FunctionDef(Generic[P, R]):
    """A function of an app, as ``@app.function`` returns it.

    Calling it (or :meth:`local`) runs the Python function in this process. ``remote``,
    ``spawn``, ``map``, ``starmap`` and ``for_each`` call the deployed function
    (``app.name``) through the server, as :class:`hopper.Function` does.
    """

    def __init__(
        self,
        app: App,
        name: str,
        fn: Callable[P, R],
        options: FunctionOptions,
        cls: type | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.raw = fn
        self.options = options
        self.cls = cls
        self.file, self.line = _where(fn)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__wrapped__ = fn

    @property
    def qualified_name(self) -> str:
        """``app.function`` (``app.Class.method`` for a method)."""
        return f"{self.app.name}.{self.name}"

    def __repr__(self) -> str:
        return f"<hopper function {self.qualified_name} ({self.file}:{self.line})>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.raw(*args, **kwargs)

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs the Python function in this process, with no server (an ``async def``
        function returns its coroutine)."""
        return self.raw(*args, **kwargs)

    def _remote_function(self) -> Function:
        from .client import Function

        return Function.from_name(self.qualified_name)

    def with_client(self, client: Client) -> Function:
        """The deployed function, called through ``client``."""
        from .client import Function

        return Function.from_name(self.qualified_name, client=client)

    def with_options(
        self,
        *,
        idempotency_key: str | None = None,
        delay: str | float | datetime.timedelta | None = None,
        start_at: str | datetime.datetime | None = None,
        key: str | None = None,
        priority: int | None = None,
    ) -> Function:
        """The deployed function with options for its calls: see ``Function.with_options``."""
        return self._remote_function().with_options(
            idempotency_key=idempotency_key, delay=delay, start_at=start_at, key=key, priority=priority
        )

    # The deployed function's calls, for convenience: see hopper.Function.
    @property
    def remote(self) -> Any:
        """``Function.remote`` of the deployed function; ``.remote.aio`` for asyncio."""
        return self._remote_function().remote

    @property
    def spawn(self) -> Any:
        """``Function.spawn`` of the deployed function."""
        return self._remote_function().spawn

    @property
    def map(self) -> Any:
        """``Function.map`` of the deployed function."""
        return self._remote_function().map

    @property
    def starmap(self) -> Any:
        """``Function.starmap`` of the deployed function."""
        return self._remote_function().starmap

    @property
    def for_each(self) -> Any:
        """``Function.for_each`` of the deployed function."""
        return self._remote_function().for_each


@dataclass
class ClsDef:
    """A class of an app, as ``@app.cls`` registered it: its methods become functions named
    ``Class.method`` (called as ``app.Class.method``)."""

    cls: type
    options: FunctionOptions
    file: str
    line: int
    enter: list[str]
    exit: list[str]
    methods: list[str]


_MARK = "__hopper_role__"


def enter() -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Marks a method of an ``@app.cls`` class to run once per worker process, before its
    first input (load a model, open a pool). An exception in it fails the process's start:
    its inputs fail with code ``startup_failed`` and the traceback as the message."""

    def mark(fn: Callable[..., T]) -> Callable[..., T]:
        setattr(fn, _MARK, "enter")
        return fn

    return mark


def exit() -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Marks a method of an ``@app.cls`` class to run once when its worker process stops
    (SIGTERM or the end of its input stream), after the inputs in flight have ended."""

    def mark(fn: Callable[..., T]) -> Callable[..., T]:
        setattr(fn, _MARK, "exit")
        return fn

    return mark


def method() -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Marks a method of an ``@app.cls`` class as a function of the app, named
    ``Class.method`` and called as ``hopper.Function.from_name("app.Class.method")``."""

    def mark(fn: Callable[..., T]) -> Callable[..., T]:
        setattr(fn, _MARK, "method")
        return fn

    return mark


_BATCH = "_hopper_batch"


def batched(*, max_batch_size: int, wait_ms: int = 0) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Dynamic batching for one method of an ``@app.cls`` class (or a function, as
    ``batch=hopper.Batch(...)`` does): callers pass one input per call; the method receives a
    list of up to ``max_batch_size`` inputs and returns a list of as many outputs, in order.
    Modal's ``@modal.batched``.

    Put it under ``@hopper.method()``::

        @hopper.method()
        @hopper.batched(max_batch_size=64, wait_ms=50)
        def embed(self, texts: list[str]) -> list[list[float]]: ...

    Args:
        max_batch_size: most inputs in one batch, 1 to 10,000.
        wait_ms: longest wait for a batch to fill, in milliseconds (0 to 600,000).

    Raises:
        ValueError: a value out of range.
    """
    if not isinstance(wait_ms, int) or not 0 <= wait_ms <= 600_000:
        raise ValueError(f"batched(wait_ms=...) must be an int from 0 to 600000, not {wait_ms!r}")
    policy = Batch(max_size=max_batch_size, wait=f"{wait_ms}ms")

    def mark(fn: Callable[..., T]) -> Callable[..., T]:
        setattr(fn, _BATCH, policy)
        return fn

    return mark


class App:
    """A named set of functions and schedules, deployed together.

    ``app = hopper.App("shop")`` at the top of a file, functions decorated with
    ``@app.function(...)`` or ``@app.cls(...)``, then ``python -m hopper deploy FILE.py``.

    Args:
        name: the app's name: a lowercase letter, then lowercase letters, digits, ``_`` or
            ``-`` (at most 64 characters).

    Raises:
        ValueError: the name is not valid.
    """

    _all: list[App] = []

    def __init__(self, name: str, *, requirements: Sequence[str] | None = None) -> None:
        """An app called ``name``.

        Args:
            requirements: Python packages its functions need, in pip's format
                (``["pandas==2.2.3", "pyarrow>=15"]``): each worker machine builds a virtual
                environment with them once (with the machine's ``python3``, seeing its other
                packages, the Hopper SDK among them) and runs the functions in it. Default
                none: functions run with the Python that deployed them.

        Raises:
            ValueError: ``name`` is not a valid app name, or a requirement is not one line.
        """
        if not isinstance(name, str) or not _APP_NAME.match(name):
            raise ValueError(
                f"invalid app name {name!r}: a lowercase letter, then lowercase letters, "
                "digits, '_' or '-', at most 64 characters"
            )
        reqs = list(requirements or [])
        for r in reqs:
            if not isinstance(r, str) or not r.strip() or "\n" in r:
                raise ValueError(f"requirements: {r!r} is not one requirement in pip's format")
        self.requirements = reqs
        self.name = name
        frame = sys._getframe(1)
        self.file = os.path.abspath(frame.f_code.co_filename)
        self.line = frame.f_lineno
        self.functions: dict[str, FunctionDef[Any, Any]] = {}
        self.classes: dict[str, ClsDef] = {}
        self.duplicates: list[tuple[str, str, int]] = []
        self.notifications: list[Notify] = []
        App._all.append(self)

    def __repr__(self) -> str:
        return f"<hopper app {self.name} ({self.file}:{self.line})>"

    def _register(self, fdef: FunctionDef[Any, Any]) -> None:
        if fdef.name in self.functions:  # refused at deploy, naming both places
            self.duplicates.append((fdef.name, fdef.file, fdef.line))
            return
        self.functions[fdef.name] = fdef

    @overload
    def function(self, fn: Callable[P, R], /) -> FunctionDef[P, R]: ...

    @overload
    def function(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        timeout: Duration | None = None,
        retries: int | Retries | None = None,
        concurrency: int | None = None,
        batch: Batch | None = None,
        min_workers: int | None = None,
        max_workers: int | None = None,
        buffer_workers: int | None = None,
        scaledown_window: Duration | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        schedule: Schedule | None = None,
        retry_on: Iterable[type[BaseException]] | type[BaseException] | None = None,
        no_retry_on: Iterable[type[BaseException]] | type[BaseException] | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        limits: Limits | None = None,
        priority: int | None = None,
        gpu: Gpu | None = None,
        cpu: float | None = None,
        memory: int | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Callable[[Callable[P, R]], FunctionDef[P, R]]: ...

    def function(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        timeout: Duration | None = None,
        retries: int | Retries | None = None,
        concurrency: int | None = None,
        batch: Batch | None = None,
        min_workers: int | None = None,
        max_workers: int | None = None,
        buffer_workers: int | None = None,
        scaledown_window: Duration | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        schedule: Schedule | None = None,
        retry_on: Iterable[type[BaseException]] | type[BaseException] | None = None,
        no_retry_on: Iterable[type[BaseException]] | type[BaseException] | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        limits: Limits | None = None,
        priority: int | None = None,
        gpu: Gpu | None = None,
        cpu: float | None = None,
        memory: int | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> FunctionDef[P, R] | Callable[[Callable[P, R]], FunctionDef[P, R]]:
        """Makes a Python function a function of this app.

        Args:
            name: the function's name in the app (default: the Python name).
            timeout: longest one attempt may run (seconds, ``"60s"``-style text or a
                timedelta; 1 s to 24 h; default 5 minutes). Past it the attempt is killed and
                fails with code ``timeout``.
            retries: retries after a failed attempt: an int (exponential backoff from 1 s,
                doubling, at most 60 s) or :class:`hopper.Retries`. Default none.
            concurrency: inputs one worker process runs at once (batches, for a batched
                function): threads for a plain function, tasks on one event loop for an
                ``async def``. Default 1.
            batch: :class:`hopper.Batch`: the function takes a list and returns a list.
            min_workers: worker processes kept running with no work (default 0: an idle
                function has no process, and its first call starts one).
            max_workers: most worker processes at once (default: the server's cores, at most
                16, and at least ``min_workers``).
            buffer_workers: idle workers kept warm beyond demand (default 0).
            scaledown_window: a worker not needed for this long stops (default 60 s).
            env: extra environment variables of the function's process. Anyone who can
                read the server sees them: pass keys and passwords as ``secrets``.
            secrets: :class:`hopper.Secret` s (``hopper.Secret.from_name("stripe")``) whose
                keys become environment variables of the function's process; their values
                stay on the server (``hopper secrets set``) and reach workers only with
                their leases. A deploy naming a secret that does not exist is refused.
            schedule: :class:`hopper.Cron`, :class:`hopper.Period`, or a period in seconds;
                only for functions that need no argument.
            retry_on: retry only these exception types (others fail at once).
            no_retry_on: never retry these exception types.
            min_containers, max_containers, buffer_containers: Modal's spellings of the
                ``*_workers`` options.
            limits: :class:`hopper.Limits`: inputs running at once and started per period,
                in total and per key, across every worker and server.
            priority: the priority of a call that gives none, -1000 to 1000 (higher runs
                first; default 0).
            gpu: GPUs each worker needs: a count (``1``), ``"any"``, a kind (``"A100"``,
                ``"H100:2"`` for two) or a list of kinds in order of preference
                (``["H100", "A100"]``). Its inputs go only to workers whose machine has them;
                local workers each get their own (``CUDA_VISIBLE_DEVICES``). Default none.
            cpu: cores each worker needs (fractional allowed): local workers of all
                functions together stay within the server's. Default none.
            memory: memory each worker needs: MiB as an int (``4096``) or a size
                (``"4GiB"``). Default none.
            labels: labels a worker's machine must have (``{"zone": "eu"}``, given to a
                worker with ``hopper worker --label zone=eu``). Default none.

        Raises:
            ValueError: an option has a value no manifest can hold.
        """
        options = FunctionOptions(
            timeout=timeout,
            retries=retries,
            concurrency=concurrency,
            batch=batch,
            limits=limits,
            priority=priority,
            gpu=gpu,
            cpu=cpu,
            memory=memory,
            labels=_labels(labels),
            min_workers=min_workers if min_workers is not None else min_containers,
            max_workers=max_workers if max_workers is not None else max_containers,
            buffer_workers=buffer_workers if buffer_workers is not None else buffer_containers,
            scaledown_window=scaledown_window,
            env=dict(env or {}),
            secrets=list(secrets or []),
            schedule=_schedule(schedule),
            retry_on=_exceptions(retry_on, "retry_on"),
            no_retry_on=_exceptions(no_retry_on, "no_retry_on") or (),
        )
        options.check()

        def decorate(f: Callable[P, R]) -> FunctionDef[P, R]:
            if isinstance(f, FunctionDef):
                raise TypeError(f"{f.name} is already a function of app {f.app.name}")
            if not callable(f):
                raise TypeError(f"@app.function decorates a function, not {f!r}")
            marked = getattr(f, _BATCH, None)
            own = options if marked is None or options.batch is not None else replace(options, batch=marked)
            fdef = FunctionDef(self, str(name or getattr(f, "__name__", "function")), f, own)
            self._register(fdef)
            return fdef

        if fn is not None:
            return decorate(fn)
        return decorate

    def notify(
        self,
        *,
        on: Iterable[str] = ("failed", "timed_out"),
        webhook: str | None = None,
        email: Iterable[str] | str = (),
        functions: Iterable[str] | None = None,
        quiet: Duration | None = None,
    ) -> None:
        """Sends a message when a call of this app fails: the manifest's ``[[notify]]`` rule.

        Args:
            on: the events: ``"failed"`` (an input failed for good), ``"timed_out"``,
                ``"schedule_missed"``, ``"recovered"`` (a function succeeded again after a
                failure).
            webhook: an ``http://`` or ``https://`` URL the server POSTs each message to as
                JSON ``{"text", "hopper": {...}}`` (Slack-compatible).
            email: addresses to mail (the server needs ``hopper serve --smtp URL``).
            functions: names of this app's functions the rule covers (default: all).
            quiet: at most one message per function and channel per this period (a
                duration such as ``"5m"`` or seconds; default 5 minutes).

        Raises:
            ValueError: no channel, no event, or an event that does not exist. The server
                checks the rest at deploy (an unknown function, a malformed URL or address).
        """
        events = [on] if isinstance(on, str) else list(on)
        unknown = [e for e in events if e not in _NOTIFY_EVENTS]
        if not events or unknown:
            raise ValueError(
                f"notify(on=...): {'unknown event ' + repr(unknown[0]) if unknown else 'no event'}; "
                f"expected some of {', '.join(_NOTIFY_EVENTS)}"
            )
        addresses = [email] if isinstance(email, str) else list(email)
        if webhook is None and not addresses:
            raise ValueError("notify(...) needs a channel: webhook=URL or email=[addresses]")
        quiet_ms = None if quiet is None else to_ms(quiet, "notify quiet")
        names = None if functions is None else [functions] if isinstance(functions, str) else list(functions)
        self.notifications.append(Notify(events, webhook, addresses, names, quiet_ms))

    def cls(
        self,
        *,
        timeout: Duration | None = None,
        retries: int | Retries | None = None,
        concurrency: int | None = None,
        min_workers: int | None = None,
        max_workers: int | None = None,
        buffer_workers: int | None = None,
        scaledown_window: Duration | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        retry_on: Iterable[type[BaseException]] | type[BaseException] | None = None,
        no_retry_on: Iterable[type[BaseException]] | type[BaseException] | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        limits: Limits | None = None,
        priority: int | None = None,
        gpu: Gpu | None = None,
        cpu: float | None = None,
        memory: int | str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Callable[[type[T]], type[T]]:
        """Makes a class's ``@hopper.method()`` methods functions of this app.

        Each method is a function named ``Class.method`` (call it as
        ``hopper.Function.from_name("app.Class.method")``) that runs in its own process per
        worker: the class is instantiated with no arguments, its ``@hopper.enter()`` methods
        run once before the first input, its ``@hopper.exit()`` methods when the process
        stops. The options are those of :meth:`function`, for every method. Called locally,
        ``Model().predict(2)`` runs in this process as the worker would run it: the
        instance's ``@hopper.enter()`` methods first, once per instance.

        Raises:
            ValueError: an option has a value no manifest can hold.
        """
        options = FunctionOptions(
            timeout=timeout,
            retries=retries,
            concurrency=concurrency,
            limits=limits,
            priority=priority,
            gpu=gpu,
            cpu=cpu,
            memory=memory,
            labels=_labels(labels),
            min_workers=min_workers if min_workers is not None else min_containers,
            max_workers=max_workers if max_workers is not None else max_containers,
            buffer_workers=buffer_workers if buffer_workers is not None else buffer_containers,
            scaledown_window=scaledown_window,
            env=dict(env or {}),
            secrets=list(secrets or []),
            retry_on=_exceptions(retry_on, "retry_on"),
            no_retry_on=_exceptions(no_retry_on, "no_retry_on") or (),
        )
        options.check()

        def decorate(cls: type[T]) -> type[T]:
            if not isinstance(cls, type):
                raise TypeError(f"@app.cls decorates a class, not {cls!r}")
            roles: dict[str, list[str]] = {"enter": [], "exit": [], "method": []}
            for attr, value in cls.__dict__.items():
                fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
                role = getattr(fn, _MARK, None)
                if role in roles:
                    roles[role].append(attr)
            file, line = _where(_first_function(cls))
            cdef = ClsDef(cls, options, file, line, roles["enter"], roles["exit"], roles["method"])
            self.classes[cls.__name__] = cdef
            for attr in roles["method"]:
                fn = cls.__dict__[attr]
                marked = getattr(fn, _BATCH, None)
                own = options if marked is None else replace(options, batch=marked)
                fdef: FunctionDef[Any, Any] = FunctionDef(self, f"{cls.__name__}.{attr}", fn, own, cls=cls)
                self._register(fdef)
                if roles["enter"] and inspect.isfunction(fn):
                    setattr(cls, attr, _entering(fn, roles["enter"]))
            return cls

        return decorate


_enter_lock = threading.Lock()
_ENTERED = "_hopper_entered"


def _claim_enter(instance: Any) -> bool:
    """True for the first caller on ``instance``: it runs the ``@enter`` methods."""
    with _enter_lock:
        if getattr(instance, _ENTERED, False):
            return False
        try:
            setattr(instance, _ENTERED, True)
        except AttributeError:  # __slots__: nowhere to remember it, so enter every time
            pass
        return True


def _unclaim_enter(instance: Any) -> None:
    with _enter_lock:
        try:
            delattr(instance, _ENTERED)
        except AttributeError:
            pass


def _run_enter(coroutine: Any, enter: str, method: str) -> None:
    """Runs an ``async def`` ``@enter`` method for a plain method called locally.

    Raises:
        RuntimeError: an event loop is running in this thread (a notebook, an ``async def``),
            where it cannot be awaited from plain code.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    coroutine.close()
    raise RuntimeError(
        f"{enter} is an async @enter method and an event loop is running here, so the plain "
        f"method {method}() cannot await it: call an async method of the class first (it awaits "
        f"@enter), or call {method}() from code outside the event loop"
    )


def _entering(fn: Callable[..., Any], enters: list[str]) -> Callable[..., Any]:
    """The method ``fn``, running the instance's ``@enter`` methods (``enters``) before its
    first call on that instance, as a worker's process does before its first input."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _claim_enter(self):
                try:
                    for name in enters:
                        result = getattr(self, name)()
                        if inspect.isawaitable(result):
                            await result
                except BaseException:
                    _unclaim_enter(self)
                    raise
            return await fn(self, *args, **kwargs)

        return run_async

    @functools.wraps(fn)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _claim_enter(self):
            try:
                for name in enters:
                    result = getattr(self, name)()
                    if inspect.iscoroutine(result):
                        _run_enter(result, f"{type(self).__name__}.{name}", fn.__name__)
            except BaseException:
                _unclaim_enter(self)
                raise
        return fn(self, *args, **kwargs)

    return run


def _first_function(cls: type) -> Callable[..., Any]:
    for value in cls.__dict__.values():
        if inspect.isfunction(value):
            return value
    return cls
