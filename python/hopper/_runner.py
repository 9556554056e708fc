"""The serve runner: ``python -m hopper._runner FILE FUNCTION`` runs one function of the app in
FILE as a ``serve`` process (docs/SERVE_PROTOCOL.md).

- Writes ``{"ready": false}`` (its worker leases nothing until it is ready), imports FILE,
  instantiates the class and runs its ``@enter`` methods (for a method), then writes
  ``{"ready": true}``. A failure there prints its traceback on stderr and exits with
  status 1: a start-up failure, not lost inputs.
- Reads requests from stdin and runs up to ``concurrency`` of them at once: on a thread pool for
  a plain function, as tasks on one event loop for an ``async def``.
- ``print()`` and ``logging`` inside an input go to that input's log (a context variable names
  the input(s) a thread or task works for); output outside any input goes to stderr, the
  worker's log. Only the runner writes to the protocol stream (the original stdout), one whole
  line at a time under a lock; file descriptor 1 is pointed at stderr so that nothing else can.
- Outputs are JSON (see ``hopper._codec``); a value that is not fails only its input.
- ``{"cancel": id}`` stops an input: an ``async def`` one's task is cancelled, a plain one's
  thread gets :class:`hopper.exception.InputCancelledError` at its next Python line (a call
  blocked in C code ends first). A batch stops when all of its inputs are cancelled. A
  cancelled input is not answered.
- SIGTERM or the end of stdin: no new input starts, the inputs in flight finish (for up to
  ``HOPPER_STOP_GRACE`` seconds, default 30; the rest are handed back by exiting), the
  ``@exit`` methods run, and the process exits with status 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ctypes
import inspect
import io
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from . import _codec
from ._frames import user_traceback
from .app import App, FunctionDef, _claim_enter
from .exception import EncodeError, InputCancelledError
from .options import NoRetry

_current: contextvars.ContextVar[_InputLog | None] = contextvars.ContextVar("hopper_input", default=None)


class _Protocol:
    """The protocol stream: the process's original stdout, written by the runner alone."""

    def __init__(self) -> None:
        self.fd = os.dup(1)
        os.dup2(2, 1)  # anything else that writes to fd 1 lands in the worker's log
        self.lock = threading.Lock()

    def send(self, messages: list[dict[str, Any]]) -> None:
        # A message (an exception's text, a log line) may hold a lone surrogate, from a file
        # name decoded with surrogateescape: it is sent as "?", not as an escape the worker
        # would refuse with the whole line.
        text = "".join(json.dumps(m, separators=(",", ":"), ensure_ascii=False) + "\n" for m in messages)
        data = text.encode("utf-8", "replace")
        with self.lock:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]


class _InputLog:
    """Where the print()s of one input (or one batch) go."""

    def __init__(self, protocol: _Protocol, ids: list[str]) -> None:
        self.protocol = protocol
        self.ids = ids
        self.partial = {"stdout": "", "stderr": ""}

    def write(self, stream: str, text: str) -> None:
        buffered = self.partial[stream] + text
        if "\n" not in buffered:
            self.partial[stream] = buffered
            return
        *lines, rest = buffered.split("\n")
        self.partial[stream] = rest
        self.emit(stream, lines)

    def emit(self, stream: str, lines: list[str]) -> None:
        self.protocol.send([{"id": i, "log": line, "stream": stream} for line in lines for i in self.ids])

    def close(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self.emit(stream, [rest])
        self.partial = {"stdout": "", "stderr": ""}


class _Router(io.TextIOBase):
    """``sys.stdout``/``sys.stderr``: to the current input's log, else to the real stderr."""

    def __init__(self, stream: str, fallback: TextIO) -> None:
        self.stream = stream
        self.fallback = fallback

    def write(self, text: str) -> int:
        log = _current.get()
        if log is None:
            self.fallback.write(text)
        else:
            log.write(self.stream, text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self.fallback.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fallback.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


def _error(exc: BaseException, options_retry: Callable[[BaseException], bool]) -> dict[str, Any]:
    original = exc
    retry = True
    if isinstance(exc, NoRetry):
        inner = exc.error
        retry = False
        if isinstance(inner, BaseException):
            exc = inner
    code = type(exc).__name__
    try:
        message = str(exc) or code
    except Exception as e:  # an exception whose __str__ fails still fails only its input
        message = f"{code} (its message cannot be shown: str() raised {type(e).__name__})"
    error: dict[str, Any] = {"code": code, "message": message}
    # Where the type is defined, for a client that has it to raise the same type, and the
    # user's frames, for the client's traceback.
    module = getattr(type(exc), "__module__", None)
    if isinstance(module, str) and module != "builtins":
        error["module"] = module
    raised = exc if exc.__traceback__ is not None else original
    if raised.__traceback__ is not None:  # an exception returned, never raised, has none
        try:
            # The worker runs the function in its copy of the snapshot: paths as in the project.
            error["traceback"] = user_traceback(raised, relative_to=os.getcwd())
        except Exception:  # a traceback that cannot be formatted is only left out
            pass
    if retry and not options_retry(exc):
        retry = False
    if not retry:
        error["retry"] = False
    return error


class _Function:
    """The function to serve, with how its inputs become arguments."""

    def __init__(self, fdef: FunctionDef[Any, Any], target: Callable[..., Any]) -> None:
        self.fdef = fdef
        self.target = target
        self.batched = fdef.options.batch is not None
        self.is_async = inspect.iscoroutinefunction(target)
        self.signature: inspect.Signature | None
        try:
            self.signature = inspect.signature(target)
            params = list(self.signature.parameters.values())
        except (TypeError, ValueError):
            self.signature, params = None, []
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.required = sum(
            1 for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )
        self.required_positional = sum(1 for p in positional if p.default is p.empty)
        o = fdef.options
        retry_on, no_retry_on = o.retry_on, o.no_retry_on

        def should_retry(exc: BaseException) -> bool:
            if no_retry_on and isinstance(exc, no_retry_on):
                return False
            return retry_on is None or isinstance(exc, retry_on)

        self.should_retry = should_retry

    def arguments(self, value: Any) -> tuple[list[Any], dict[str, Any]]:
        """The arguments for one input (the inverse of ``_codec.encode_args``).

        Raises:
            NoRetry: they do not fit the function's parameters (a ``TypeError`` no retry
                can mend).
        """
        args, kwargs = self._arguments(value)
        if self.signature is not None:
            # As a call would: an unknown keyword is named before any missing argument.
            params = self.signature.parameters.values()
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                takes = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
                unknown = next((k for k in kwargs if k not in takes), None)
                if unknown is not None:
                    problem = f"got an unexpected keyword argument {unknown!r}"
                    raise NoRetry(TypeError(f"{self.fdef.name}(): {problem}"))
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as e:
                raise NoRetry(TypeError(f"{self.fdef.name}(): {e}")) from None
        return args, kwargs

    def _arguments(self, value: Any) -> tuple[list[Any], dict[str, Any]]:
        if isinstance(value, dict) and value and set(value) <= {_codec.ARGS_KEY, _codec.KWARGS_KEY}:
            args = value.get(_codec.ARGS_KEY, [])
            kwargs = value.get(_codec.KWARGS_KEY, {})
            if isinstance(args, list) and isinstance(kwargs, dict):
                return args, kwargs
        if value is None and self.required == 0:
            return [], {}
        # A bare list (from the CLI or HTTP) is spread only over a function that cannot take
        # it as one argument: one that requires two or more.
        if self.required_positional >= 2 and isinstance(value, list):
            return value, {}
        return [value], {}


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    """Makes ``exc`` raise in the thread at its next Python line; ``None`` takes back one that
    has not been raised yet (CPython's ``PyThreadState_SetAsyncExc``)."""
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    set_async_exc(ctypes.c_ulong(thread_id), None if exc is None else ctypes.py_object(exc))


class _Work:
    """One request (an input, or a batch) from when it is read until it is answered."""

    def __init__(self, request: dict[str, Any]) -> None:
        items = request["batch"] if "batch" in request else [request]
        self.ids = [str(item["id"]) for item in items]
        self.inputs = [item.get("input") for item in items]
        self.cancelled: set[str] = set()
        self.thread: int | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = False

    def is_cancelled(self) -> bool:
        return self.cancelled.issuperset(self.ids)


class _Runner:
    def __init__(self, protocol: _Protocol, fn: _Function, loop: asyncio.AbstractEventLoop | None) -> None:
        self.protocol = protocol
        self.fn = fn
        concurrency = fn.fdef.options.concurrency or 1
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.loop = loop if fn.is_async else None
        if fn.is_async and self.loop is None:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="hopper-loop", daemon=True).start()
        if self.loop is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=concurrency, thread_name_prefix="hopper-input"
            )
        self.in_flight: set[concurrent.futures.Future[None]] = set()
        self.lock = threading.Lock()
        self.works: dict[str, _Work] = {}  # by input id, until the work ends
        self.stopping = False
        self.eof = threading.Event()

    # --- one request -----------------------------------------------------------------

    def answer(self, item_id: str, output: Any) -> dict[str, Any]:
        # Large byte strings (and a large output as a whole) go to files the worker stores as
        # blobs, instead of through the pipe as base64.
        folder = os.environ.get("HOPPER_BLOB_DIR")
        put = (lambda data: _codec.file_reference(data, folder)) if folder else None
        try:
            return {"id": item_id, "output": json.loads(_codec.dumps(output, "the output", put))}
        except EncodeError as e:
            return {"id": item_id, "error": {"code": "bad_output", "message": str(e)}}
        except OSError as e:
            return {
                "id": item_id,
                "error": {"code": "bad_output", "message": f"cannot write the output: {e}"},
            }

    def failed(self, ids: list[str], log: _InputLog, exc: BaseException) -> list[dict[str, Any]]:
        text = user_traceback(exc)
        log.emit("stderr", text.rstrip("\n").split("\n"))
        error = _error(exc, self.fn.should_retry)
        return [{"id": i, "error": error} for i in ids]

    def finish(self, ids: list[str], results: list[Any]) -> list[dict[str, Any]]:
        out = []
        for i, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                error = _error(result, self.fn.should_retry)
                out.append({"id": i, "error": error})
            else:
                out.append(self.answer(i, result))
        return out

    def check_batch(self, ids: list[str], results: Any) -> list[Any]:
        if not isinstance(results, (list, tuple)):
            raise TypeError(
                f"the batched function {self.fn.fdef.name} returned {type(results).__name__}, not a list"
            )
        if len(results) != len(ids):
            raise ValueError(
                f"the batched function {self.fn.fdef.name} returned {len(results)} results "
                f"for {len(ids)} inputs"
            )
        return list(results)

    def begin(self, work: _Work, thread: int | None = None, task: asyncio.Task[None] | None = None) -> bool:
        """Marks ``work`` as running (where it can be cancelled); False if it already was."""
        with self.lock:
            if work.is_cancelled():
                for i in work.ids:
                    self.works.pop(i, None)
                return False
            work.thread, work.task = thread, task
            return True

    def end(self, work: _Work) -> None:
        """Marks ``work`` as ended: a cancel from now on does nothing, and one that was sent
        to its thread but not yet raised is taken back."""
        with self.lock:
            work.done = True
            for i in work.ids:
                self.works.pop(i, None)
            if work.thread is not None and work.is_cancelled():
                _raise_in_thread(work.thread, None)

    def cancel(self, input_id: str) -> None:
        """Stops the work ``input_id`` belongs to once all of its inputs are cancelled."""
        with self.lock:
            work = self.works.get(input_id)
            if work is None or work.done:
                return
            work.cancelled.add(input_id)
            if not work.is_cancelled():
                return
            if work.thread is not None:
                _raise_in_thread(work.thread, InputCancelledError)
            elif work.task is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(work.task.cancel)
            # Not started yet: begin() sees it.

    def call_sync(self, work: _Work) -> list[dict[str, Any]]:
        if self.fn.batched:
            return self.finish(work.ids, self.check_batch(work.ids, self.fn.target(work.inputs)))
        args, kwargs = self.fn.arguments(work.inputs[0])
        return [self.answer(work.ids[0], self.fn.target(*args, **kwargs))]

    async def call_async(self, work: _Work) -> list[dict[str, Any]]:
        if self.fn.batched:
            return self.finish(work.ids, self.check_batch(work.ids, await self.fn.target(work.inputs)))
        args, kwargs = self.fn.arguments(work.inputs[0])
        return [self.answer(work.ids[0], await self.fn.target(*args, **kwargs))]

    def run_sync(self, work: _Work) -> None:
        if not self.begin(work, thread=threading.get_ident()):
            return
        log = _InputLog(self.protocol, work.ids)
        token = _current.set(log)
        try:
            try:
                messages = self.call_sync(work)
            finally:
                self.end(work)
        except BaseException as exc:
            if work.is_cancelled():
                return
            messages = self.failed(work.ids, log, exc)
        finally:
            _current.reset(token)
        if work.is_cancelled():
            return
        log.close()
        self.protocol.send(messages)

    async def run_async(self, work: _Work) -> None:
        if not self.begin(work, task=asyncio.current_task()):
            return
        log = _InputLog(self.protocol, work.ids)
        _current.set(log)  # this task's own context
        try:
            try:
                messages = await self.call_async(work)
            finally:
                self.end(work)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and self.stopping:
                raise
            if work.is_cancelled():
                return
            messages = self.failed(work.ids, log, exc)
        _current.set(None)
        if work.is_cancelled():
            return
        log.close()
        self.protocol.send(messages)

    # --- the loop ----------------------------------------------------------------------

    def submit(self, request: dict[str, Any]) -> None:
        work = _Work(request)
        with self.lock:
            for i in work.ids:
                self.works[i] = work
        future: concurrent.futures.Future[None]
        if self.loop is not None:
            future = asyncio.run_coroutine_threadsafe(self.run_async(work), self.loop)
        else:
            assert self.pool is not None
            future = self.pool.submit(self.run_sync, work)
        with self.lock:
            self.in_flight.add(future)
        future.add_done_callback(self.done)

    def done(self, future: concurrent.futures.Future[None]) -> None:
        with self.lock:
            self.in_flight.discard(future)
        exc = future.exception() if not future.cancelled() else None
        if exc is not None:  # a bug in the runner itself: say so, never hang the input
            print(f"hopper runner: {exc!r}", file=sys.__stderr__)

    def read(self) -> None:
        stdin = sys.stdin.buffer
        for raw in stdin:
            if self.stopping:
                continue
            line = raw.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                print(f"hopper runner: ignoring a request that is not JSON: {e}", file=sys.stderr)
                continue
            if "cancel" in request:
                self.cancel(str(request["cancel"]))
                continue
            request = self.decode(request)
            if request is not None:
                self.submit(request)
        self.eof.set()

    def decode(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """``request`` with its inputs decoded (``{"$bytes": ...}`` to ``bytes``). An input
        that cannot be is answered with a ``bad_input`` error now, so that it does not wait
        for its timeout; None when nothing is left to run."""
        batch = "batch" in request
        items = request["batch"] if batch else [request]
        if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
            print("hopper runner: ignoring a request without an id", file=sys.stderr)
            return None
        good, bad = [], []
        for item in items:
            try:
                good.append({**item, "input": _codec.decode(item.get("input"))})
            except (ValueError, TypeError, RecursionError, OSError) as e:
                error = {"code": "bad_input", "message": f"the input cannot be decoded: {e}", "retry": False}
                bad.append({"id": str(item["id"]), "error": error})
        if bad:
            self.protocol.send(bad)
        if not good:
            return None
        return {"batch": good} if batch else good[0]

    def serve(self, grace: float) -> None:
        reader = threading.Thread(target=self.read, name="hopper-stdin", daemon=True)
        reader.start()
        stop = threading.Event()

        def on_term(signum: int, frame: Any) -> None:
            self.stopping = True
            stop.set()

        signal.signal(signal.SIGTERM, on_term)
        while not self.eof.wait(0.25) and not stop.is_set():
            pass
        self.stopping = True
        with self.lock:
            pending = list(self.in_flight)
        concurrent.futures.wait(pending, timeout=grace)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _prepare(
    fdef: FunctionDef[Any, Any], app: App, run: Callable[[Any], Any]
) -> tuple[Callable[..., Any], list[Callable[[], Any]]]:
    """The callable to serve and the ``@exit`` methods to run at the end; runs ``@enter``
    (awaiting an ``async def`` one with ``run``)."""
    if fdef.cls is None:
        return fdef.raw, []
    cdef = app.classes[fdef.cls.__name__]
    instance = fdef.cls()
    _claim_enter(instance)  # so a method that calls another does not enter again
    for name in cdef.enter:
        result = getattr(instance, name)()
        if inspect.isawaitable(result):
            run(result)
    exits = [getattr(instance, name) for name in cdef.exit]
    # The method as written (app.cls wraps it, for local calls, to run @enter first).
    target: Callable[..., Any] = fdef.raw.__get__(instance, fdef.cls)
    return target, exits


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _loop_runner(loop: asyncio.AbstractEventLoop | None) -> Callable[[Any], Any]:
    def run(awaitable: Any) -> Any:
        if loop is None:
            return asyncio.run(_await(awaitable))
        return asyncio.run_coroutine_threadsafe(_await(awaitable), loop).result()

    return run


def main(argv: list[str] | None = None) -> int:
    """Runs the serve runner; returns the process's exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m hopper._runner FILE FUNCTION", file=sys.stderr)
        return 2
    file, name = args
    protocol = _Protocol()
    # Loading (imports, @enter) may take long: the worker leases nothing until the ready line.
    protocol.send([{"ready": False}])
    fallback = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    sys.stdout = _Router("stdout", fallback)
    sys.stderr = _Router("stderr", fallback)
    try:
        from ._deploy import load_app

        app = load_app(file)
        fdef = app.functions.get(name)
        if fdef is None:
            names = ", ".join(app.functions) or "none"
            print(
                f"hopper runner: app {app.name!r} in {file} has no function {name!r} (it has: {names})",
                file=fallback,
            )
            return 2
        loop: asyncio.AbstractEventLoop | None = None
        if inspect.iscoroutinefunction(fdef.raw):
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="hopper-loop", daemon=True).start()
        run = _loop_runner(loop)
        target, exits = _prepare(fdef, app, run)
    except BaseException:
        traceback.print_exc(file=fallback)
        fallback.flush()
        return 1
    runner = _Runner(protocol, _Function(fdef, target), loop)
    protocol.send([{"ready": True}])
    grace = float(os.environ.get("HOPPER_STOP_GRACE", "30"))
    runner.serve(grace)
    for fn in exits:
        try:
            result = fn()
            if inspect.isawaitable(result):
                run(result)
        except BaseException:
            traceback.print_exc(file=fallback)
    fallback.flush()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
