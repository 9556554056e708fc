"""The client: :class:`Client`, :class:`Function` and :class:`FunctionCall`.

Every call has an asyncio twin under ``.aio``: ``await f.remote.aio(x)``,
``async for y in f.map.aio(xs)``, ``await call.get.aio(timeout=30)``.

Each operation is written once, as a plan (a generator that yields the HTTP requests it needs
and receives their answers); a synchronous and an asynchronous driver carry the plans out.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import itertools
import os
import ssl
import sys
import threading
import time
import uuid
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar
from urllib.parse import quote

import httpx

from . import _codec
from .exception import (
    AuthError,
    CallNotFoundError,
    CallTimeoutError,
    ConnectionError,
    DeployError,
    Error,
    FunctionNotFoundError,
    InputCancelledError,
    InputFailedError,
    InvalidInputError,
    NotFoundError,
    ServerError,
    input_failed,
)

__all__ = ["Client", "Function", "FunctionCall"]

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A")

DEFAULT_SERVER = "http://127.0.0.1:7433"
#: Longest single long-poll of ``GET /v1/calls/{id}?wait=`` (the server allows 300 s).
POLL_SECONDS = 55.0
#: Longest single long-poll of a map's results (the server allows 60 s).
RESULTS_POLL_SECONDS = 30.0
_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class _Twin(Generic[P, R, A]):
    """A call with a synchronous form (``f(...)``) and an asyncio one (``f.aio(...)``)."""

    def __init__(self, sync: Callable[P, R], aio: Callable[P, A], doc: str | None = None) -> None:
        self._sync = sync
        self.aio = aio
        self.__doc__ = doc or sync.__doc__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._sync(*args, **kwargs)


# ---- plans: the operations, free of I/O ----------------------------------------------------


@dataclass
class _Req:
    method: str
    path: str
    body: str | None = None
    params: dict[str, Any] | None = None
    timeout: float | None = None


@dataclass
class _Pull:
    """The next ``n`` inputs, encoded (fewer means the inputs ran out)."""

    n: int


@dataclass
class _Emit:
    value: Any


@dataclass
class _MapState:
    call_id: str | None = None
    finished: bool = False
    cancel_sent: bool = False
    sent: int = 0
    received: int = 0


class _Progress:
    """A map's progress on one line of a terminal (stderr), redrawn at most five times a
    second: inputs done, of how many when known, the rate; a last line when the map ends.

    Shown when ``enabled`` is true, or when it is ``None`` and stderr is a terminal."""

    EVERY = 0.2

    def __init__(self, name: str, total: int | None, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled = enabled
        self.name = name
        self.total = total
        self.started = time.monotonic()
        self.drawn = 0.0
        self.width = 0

    def _line(self, state: _MapState) -> str:
        of = f" of {self.total:,}" if self.total is not None else f" of {state.sent:,} sent"
        seconds = time.monotonic() - self.started
        rate = f", {state.received / seconds:,.0f}/s" if seconds >= 1 else ""
        return f"map {self.name}: {state.received:,}{of} done{rate}"

    def update(self, state: _MapState, waiting: bool) -> None:
        """Draws the line if it is due (every ``EVERY`` seconds), or at once when the map is
        about to wait on the server and the line is not on the terminal."""
        now = time.monotonic()
        if not self.enabled or (now - self.drawn < self.EVERY and not (waiting and self.width == 0)):
            return
        self.drawn = now
        line = self._line(state)
        sys.stderr.write("\r" + line.ljust(self.width))
        sys.stderr.flush()
        self.width = len(line)

    def clear(self) -> None:
        """Takes the line off the terminal before an output goes to the caller, who may print
        it: the caller's lines never run into it, and it is drawn again below them."""
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0

    def close(self, state: _MapState) -> None:
        if not self.enabled:
            return
        seconds = time.monotonic() - self.started
        line = f"map {self.name}: {state.received:,} done in {seconds:.1f} s"
        if state.call_id is not None and not state.finished:
            line += f" (stopped early: call {state.call_id} cancelled)"
        sys.stderr.write("\r" + line.ljust(self.width) + "\n")
        sys.stderr.flush()


def _naming_map(error: Error, state: _MapState) -> Error:
    """``error`` (the server could not be reached during a map), saying which call the map is,
    so its results can be read once the server is back."""
    if isinstance(error, ConnectionError) and state.call_id is not None and error.args:
        error.args = (
            f"{error.args[0]} The map is call {state.call_id}: if the server finishes it, "
            f"`hopper results {state.call_id}` reads its outputs.",
        )
    return error


def _total(iterables: tuple[Any, ...]) -> int | None:
    """How many inputs zipping ``iterables`` gives, when each has a length."""
    try:
        return min(len(i) for i in iterables) if iterables else None
    except TypeError:
        return None


class _UnknownFunction(Error):
    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


Plan = Generator[Any, Any, R]


def _function_path(name: str, tail: str) -> str:
    return f"/v1/functions/{quote(name, safe='')}/{tail}"


def _call_path(call_id: str, tail: str = "") -> str:
    base = f"/v1/calls/{quote(call_id, safe='')}"
    return f"{base}/{tail}" if tail else base


def _names_plan(name: str, error: _UnknownFunction) -> Plan[FunctionNotFoundError]:
    try:
        functions = yield _Req("GET", "/v1/functions")
        names = sorted(f["name"] for f in functions)
    except Error:
        names = []
    return FunctionNotFoundError(name, error.message, names)


def _on_function(name: str, req: _Req) -> Plan[Any]:
    """Sends ``req`` about function ``name``; an unknown function raises
    FunctionNotFoundError with the names that are deployed."""
    try:
        return (yield req)
    except _UnknownFunction as e:
        raise (yield from _names_plan(name, e)) from None


def _spawn_plan(
    name: str, input_text: str, wait: float = 0.0, key: str | None = None, start: str = ""
) -> Plan[dict[str, Any]]:
    """Spawns a call; with ``wait`` (seconds), the server answers once it ended or after
    ``wait``, whichever is first. ``key`` is the idempotency key (default: a new one, so a
    retried request cannot spawn twice); a key used before answers that call. ``start`` is
    :func:`_start_fields` of a delayed call."""
    key_text = _codec.dumps(key or f"py-{uuid.uuid4()}")
    body = '{"input":' + input_text + ',"idempotency_key":' + key_text + start + "}"
    req = _Req("POST", _function_path(name, "calls"), body=body)
    if wait > 0:
        req.params, req.timeout = {"wait": wait}, wait + 30
    call: dict[str, Any] = yield from _on_function(name, req)
    return call


SPAWN_BATCH = 1000
"""Most calls one bulk spawn request makes (the server's limit)."""

SPAWN_BATCH_BYTES = 2 * 1024 * 1024
"""Most bytes of inputs one bulk spawn request carries (the server's default limit is 4 MiB;
a request it refuses as too large is split in two and sent again)."""


def _annotate(error: Error, spawned: list[str], note: str) -> None:
    """Adds to a failed bulk spawn's error what was spawned before it: ``spawned`` (ids), and
    a note at the end of its message."""
    error.spawned = list(spawned)  # type: ignore[attr-defined]
    if error.args:
        error.args = (f"{error.args[0]} (spawn_many: {note})", *error.args[1:])


def _start_fields(delay: Any, start_at: Any) -> str:
    """The JSON fields of a delayed call (``,"delay":"90000ms"`` or ``,"start_at":"…"``),
    checked; empty when it starts at once.

    Raises:
        ValueError: both are given, the delay is not a duration, or ``start_at`` is neither a
            timezone-aware :class:`datetime.datetime` nor an RFC 3339 string.
    """
    from ._durations import to_ms

    if delay is not None and start_at is not None:
        raise ValueError("give delay or start_at, not both")
    if delay is not None:
        ms = to_ms(delay, "delay")
        if ms < 0:
            raise ValueError(f"delay: {delay!r} is negative")
        return f',"delay":"{ms}ms"'
    if start_at is None:
        return ""
    if isinstance(start_at, datetime.datetime):
        if start_at.tzinfo is None:
            raise ValueError(
                "start_at: a datetime needs its time zone (datetime.now(timezone.utc), not datetime.now())"
            )
        return ',"start_at":' + _codec.dumps(start_at.isoformat())
    if isinstance(start_at, str):
        try:
            datetime.datetime.fromisoformat(start_at.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"start_at: {start_at!r} is not an RFC 3339 time (2026-12-24T18:00:00Z)"
            ) from None
        return ',"start_at":' + _codec.dumps(start_at)
    raise ValueError(f"start_at: expected a datetime or an RFC 3339 string, not {type(start_at).__name__}")


def _queue_fields(key: Any, priority: Any) -> str:
    """The JSON fields of a call's key and priority (``,"key":"acme","priority":5``), checked;
    empty without them.

    Raises:
        ValueError: the key is not 1 to 200 bytes of UTF-8 without control characters, or the
            priority not an integer from -1000 to 1000.
    """
    fields = ""
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"key: expected a non-empty string, not {key!r}")
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"key: {key!r} holds a lone surrogate, which is not text") from None
        if size > 200:
            raise ValueError(f"key: a key is at most 200 bytes, not {size}")
        if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in key):
            raise ValueError("key: a key has no control characters")
        fields += ',"key":' + _codec.dumps(key)
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority: expected an integer, not {priority!r}")
        if not -1000 <= priority <= 1000:
            raise ValueError(f"priority: a priority is between -1000 and 1000, not {priority}")
        fields += f',"priority":{priority}'
    return fields


def _spawn_many_plan(name: str, inputs: list[str], keys: list[str], timing: str = "") -> Plan[list[str]]:
    """Spawns one call per input, up to :data:`SPAWN_BATCH` calls and
    :data:`SPAWN_BATCH_BYTES` of inputs to a request (each request one transaction); returns
    the calls' ids in order. Each call has its key, so a request repeated after a network
    error spawns nothing twice. A failed request raises with ``spawned`` (the ids made
    before it) set on the exception."""
    ids: list[str] = []
    start = 0
    while start < len(inputs):
        take, size = 0, 0
        for text in inputs[start : start + SPAWN_BATCH]:
            if take and size + len(text) > SPAWN_BATCH_BYTES:
                break
            take, size = take + 1, size + len(text)
        while True:
            calls = ",".join(
                '{"input":' + text + ',"idempotency_key":' + _codec.dumps(key) + timing + "}"
                for text, key in zip(inputs[start : start + take], keys[start : start + take], strict=True)
            )
            req = _Req("POST", _function_path(name, "calls/batch"), body='{"calls":[' + calls + "]}")
            try:
                answer: dict[str, Any] = yield from _on_function(name, req)
                break
            except InvalidInputError as e:
                if e.status == 413 and take > 1:
                    take //= 2
                    continue
                _annotate(
                    e,
                    ids,
                    f"inputs 0 to {start - 1} were spawned (their ids are in the exception's "
                    f"`spawned`); this request held inputs {start} to {start + take - 1}"
                    if start
                    else f"nothing was spawned; this request held inputs 0 to {take - 1}",
                )
                raise
            except (ConnectionError, ServerError) as e:
                _annotate(
                    e,
                    ids,
                    f"{start} inputs were spawned before this request (their ids are in the "
                    "exception's `spawned`); this request's calls may or may not have been made: "
                    "pass idempotency_keys to spawn again without duplicates",
                )
                raise
            except Error as e:
                _annotate(
                    e,
                    ids,
                    f"{start} inputs were spawned before this request (their ids are in the "
                    "exception's `spawned`); this request made none",
                )
                raise
        ids.extend(str(c["id"]) for c in answer["calls"])
        start += take
    return ids


def _check_key(key: Any, what: str) -> None:
    """Refuses an idempotency key the server would refuse: 1 to 255 visible ASCII characters.

    Raises:
        ValueError: it is not such a string, naming ``what`` and the first bad character.
    """
    if not isinstance(key, str) or not 1 <= len(key) <= 255:
        raise ValueError(f"{what} must be a string of 1 to 255 characters, not {key!r}")
    bad = next((c for c in key if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ValueError(f"{what} holds {bad!r}: a key is visible ASCII characters only (no spaces)")


def _remote_plan(name: str, input_text: str, key: str | None = None, start: str = "") -> Plan[Any]:
    """Spawns and waits in one round trip when the call ends within a long-poll."""
    call = yield from _spawn_plan(name, input_text, wait=POLL_SECONDS, key=key, start=start)
    # A token that may submit but not read gets the state without the output: ask again,
    # which says so (AuthError).
    if call.get("state") in _TERMINAL and ("output" in call or "error" in call):
        return _outcome(call)
    return (yield from _get_plan(call["id"], None))


def _outcome(call: dict[str, Any]) -> Any:
    state = call.get("state")
    call_id = call.get("id")
    if state == "succeeded":
        return call.get("output")
    error = call.get("error") or {}
    code, message = str(error.get("code", state)), str(error.get("message", ""))
    if state == "cancelled" or code == "cancelled":
        raise InputCancelledError(message or f"call {call_id} was cancelled", call_id)
    failed = call.get("inputs", {}).get("failed", 0)
    if call.get("origin") == "map" and not error:
        raise input_failed("failed", f"{failed} input{'' if failed == 1 else 's'} of the map failed", call_id)
    # A map's error is its first failed input's, at `failed_index`.
    index = call.get("failed_index")
    raise _input_failed(error, state, call_id, index if isinstance(index, int) else 0)


def _input_failed(error: dict[str, Any], default: Any, call_id: Any, index: int = 0) -> InputFailedError:
    """The exception for a call's or an input's ``error`` object (see :func:`input_failed`)."""
    module, traceback = error.get("module"), error.get("traceback")
    return input_failed(
        str(error.get("code", default)),
        str(error.get("message", "")),
        call_id,
        index,
        module=module if isinstance(module, str) else None,
        traceback=traceback if isinstance(traceback, str) else None,
    )


def _get_plan(call_id: str, timeout: float | None) -> Plan[Any]:
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        left = POLL_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
        wait = min(left, POLL_SECONDS)
        call = yield _info_req(call_id, wait)
        if call.get("state") in _TERMINAL:
            if call.get("origin") == "map" and call.get("state") == "succeeded":
                return (yield from _collect_plan(call_id))
            return _outcome(call)
        if deadline is not None and time.monotonic() >= deadline:
            raise CallTimeoutError(
                f"call {call_id} has not ended after {timeout} s (it goes on; get() it again later)",
                call_id,
            )


def _collect_plan(call_id: str) -> Plan[list[Any]]:
    out: list[Any] = []
    after = -1
    while True:
        page = yield _Req(
            "GET", _call_path(call_id, "results"), params={"order": "index", "after": after, "limit": 10_000}
        )
        for r in page["results"]:
            out.append(_result(r, call_id, True))
        after = page["next"]
        if page["done"]:
            return out


def _result(r: dict[str, Any], call_id: str, return_exceptions: bool) -> Any:
    if r.get("state") == "succeeded":
        return r.get("output")
    error = r.get("error") or {}
    index = int(r.get("index", 0))
    exc: Error
    if r.get("state") == "cancelled":
        exc = InputCancelledError(str(error.get("message") or "the input was cancelled"), call_id, index)
    else:
        exc = _input_failed(error, "error", call_id, index)
    if return_exceptions:
        return exc
    raise exc


def _map_body(inputs: list[str], done: bool, key: str | None, discard: bool = False, start: str = "") -> str:
    """The body of ``POST /v1/functions/{name}/map`` (inputs already encoded); ``start`` is
    :func:`_start_fields` of a delayed map."""
    return (
        '{"inputs":['
        + ",".join(inputs)
        + '],"done":'
        + ("true" if done else "false")
        + ',"discard_results":'
        + ("true" if discard else "false")
        + ',"idempotency_key":'
        + _codec.dumps(key or f"py-{uuid.uuid4()}")
        + start
        + "}"
    )


def _chunk_body(start: int, inputs: list[str], done: bool) -> str:
    """The body of ``POST /v1/calls/{id}/inputs``: inputs from index ``start``."""
    return (
        '{"start":'
        + str(start)
        + ',"inputs":['
        + ",".join(inputs)
        + '],"done":'
        + ("true" if done else "false")
        + "}"
    )


def _map_start_plan(
    name: str, inputs: list[str], key: str | None, chunk_size: int = 1000
) -> Plan[dict[str, Any]]:
    """Starts a map over ``inputs`` (each encoded), sends them all and closes it; returns the
    call. A ``key`` used before answers that map: only the inputs it lacks are sent."""
    chunk_size = max(1, chunk_size)
    first = inputs[:chunk_size]
    body = _map_body(first, len(first) == len(inputs), key)
    call: dict[str, Any] = yield from _on_function(name, _Req("POST", _function_path(name, "map"), body=body))
    sent = int((call.get("inputs") or {}).get("total", len(first)))
    while call.get("accepting_inputs"):
        chunk = inputs[sent : sent + chunk_size]
        body = _chunk_body(sent, chunk, sent + len(chunk) >= len(inputs))
        call = yield _Req("POST", _call_path(call["id"], "inputs"), body=body)
        sent += len(chunk)
    return call


def _map_plan(
    name: str,
    state: _MapState,
    *,
    ordered: bool,
    return_exceptions: bool,
    discard: bool,
    chunk_size: int,
    max_outstanding: int,
    start: str = "",
) -> Plan[None]:
    first: list[str] = yield _Pull(min(chunk_size, max_outstanding))
    exhausted = len(first) < min(chunk_size, max_outstanding)
    if not first and exhausted:
        state.finished = True
        return
    body = _map_body(first, exhausted, None, discard, start)
    call = yield from _on_function(name, _Req("POST", _function_path(name, "map"), body=body))
    call_id: str = call["id"]
    state.call_id = call_id
    state.sent = len(first)
    order = "index" if ordered else "completion"
    after: int | None = None
    while True:
        room = max_outstanding - (state.sent - state.received)
        if not exhausted and room > 0:
            n = min(chunk_size, room)
            chunk: list[str] = yield _Pull(n)
            exhausted = len(chunk) < n
            if chunk or exhausted:
                yield _Req(
                    "POST", _call_path(call_id, "inputs"), body=_chunk_body(state.sent, chunk, exhausted)
                )
                state.sent += len(chunk)
        room = max_outstanding - (state.sent - state.received)
        wait = 0.0 if (not exhausted and room > 0) else RESULTS_POLL_SECONDS
        params: dict[str, Any] = {"order": order, "wait": wait, "limit": 10_000}
        if after is not None:
            params["after"] = after
        page = yield _Req("GET", _call_path(call_id, "results"), params=params, timeout=wait + 30)
        after = page["next"]
        for r in page["results"]:
            state.received += 1
            value = _result(r, call_id, return_exceptions)
            yield _Emit(None if discard and not isinstance(value, Error) else value)
        if page["done"]:
            state.finished = True
            return


# ---- the client -----------------------------------------------------------------------------


def _base_url(server: str) -> str:
    """``server`` as a base URL: ``host:port`` gets ``http://``; a trailing ``/v1`` (the API's
    prefix, which the SDK adds itself) is dropped.

    Raises:
        InvalidInputError: the URL's scheme is not http or https.
    """
    given = server
    server = server.strip()
    if "://" not in server:
        server = f"http://{server}"
    server = server.rstrip("/")
    try:
        url = httpx.URL(server)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host or any(c.isspace() for c in server):
        raise InvalidInputError(
            f"the server URL {given!r} is not an http:// or https:// URL with a host "
            "(from hopper.Client(server=...) or $HOPPER_SERVER)",
            "invalid_server_url",
        )
    if server.endswith("/v1"):
        server = server[: -len("/v1")]
    return server


def _trusted() -> ssl.SSLContext:
    """What HTTPS servers are trusted: the system's certificate store (and ``$SSL_CERT_FILE``,
    which OpenSSL reads), plus the PEM certificates in ``$HOPPER_CA_CERT``: a private CA.

    Raises:
        InvalidInputError: ``$HOPPER_CA_CERT`` names a file that cannot be read or holds no
            certificate.
    """
    context = ssl.create_default_context()
    extra = os.environ.get("HOPPER_CA_CERT")
    if extra:
        try:
            context.load_verify_locations(cafile=extra)
        except (OSError, ssl.SSLError) as e:
            raise InvalidInputError(
                f"HOPPER_CA_CERT={extra}: cannot read certificates from it ({e})", "invalid_ca_cert"
            ) from None
    return context


def _error_from(response: httpx.Response, token_hint: str) -> Error:
    status = response.status_code
    try:
        body = response.json()
        code = str(body["error"]["code"])
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_" + str(status), response.text[:500] or response.reason_phrase
    if status in (401, 403):
        hint = f" ({token_hint})" if status == 401 else ""
        return AuthError(message + hint, status)
    if status == 404:
        if code == "unknown_function":
            return _UnknownFunction(message)
        if code == "unknown_call":
            return CallNotFoundError(message)
        return NotFoundError(message)
    if 400 <= status < 500:
        return InvalidInputError(message, code, status)
    return ServerError(f"the server answered {status}: {message}", status, code)


#: A request body this large that breaks off while the server still answers was refused for
#: its size: the server answers 413 before reading such a body and closes the connection,
#: which a client still sending may see as a reset instead of the answer.
_LARGE_BODY = 1 << 20


def _large(req: _Req) -> bool:
    return req.body is not None and len(req.body) > _LARGE_BODY


def _too_large(req: _Req) -> InvalidInputError:
    size = len(req.body.encode()) if req.body is not None else 0
    return InvalidInputError(
        f"the server broke off while receiving a {size:,}-byte request: it is over the server's "
        "payload limit (hopper serve --max-payload, default 4 MiB); send a smaller input, or a "
        "reference to the data (a path or URL) instead of the data",
        "payload_too_large",
        413,
    )


class Client:
    """A connection to a Hopper server.

    Args:
        server: the server's URL, or ``host:port``. Default: ``$HOPPER_SERVER``, else
            ``http://127.0.0.1:7433``. A trailing ``/v1`` is dropped.
        token: a bearer token. Default: ``$HOPPER_TOKEN``, else none.
        timeout: seconds to wait for the server's answer to a request that does not long-poll
            (default 30).
        retries: attempts at a request that failed to reach the server or got 503, before
            :class:`hopper.exception.ConnectionError` (default 5). Every request the SDK sends is
            safe to repeat (spawns carry an idempotency key, input chunks their position).

    One client can be used from many threads and event loops; ``Function.from_name`` and
    ``FunctionCall.from_id`` use :meth:`default` unless given one.

    Raises:
        InvalidInputError: ``server`` is not an http:// or https:// URL.
    """

    _default: Client | None = None
    _default_lock = threading.Lock()

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 5,
    ) -> None:
        given = server or os.environ.get("HOPPER_SERVER") or DEFAULT_SERVER
        #: The servers' base URLs; several when ``server`` lists servers of one cluster.
        self.servers = [_base_url(url) for url in given.split(",") if url.strip()] or [_base_url(given)]
        self._current = 0
        self.token = token if token is not None else (os.environ.get("HOPPER_TOKEN") or None)
        self.timeout = timeout
        self.retries = max(1, retries)
        headers = {"content-type": "application/json", "user-agent": "hopper-python"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        self._headers = headers
        # Where a user fixes the server's address or the token, for error messages (the
        # Airflow hook names its connection instead).
        self._server_hint = "Set HOPPER_SERVER (or hopper.Client(server=...)) to its address."
        self._token_hint = "set HOPPER_TOKEN or hopper.Client(token=...)"
        self._sync: httpx.Client | None = None
        self._lock = threading.Lock()
        self._aio: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"hopper.Client({','.join(self.servers)!r})"

    @property
    def server(self) -> str:
        """The base URL requests go to: the first of ``servers`` until it cannot be reached,
        then the next (``server`` may list several servers of one cluster, comma-separated, as
        ``$HOPPER_SERVER`` may; they share one database, so a call is found through any)."""
        return self.servers[self._current % len(self.servers)]

    def _fail_over(self, failed: str) -> None:
        """Moves requests on from ``failed``, unless another request already moved them."""
        if len(self.servers) > 1 and self.server == failed:
            self._current = (self._current + 1) % len(self.servers)

    @classmethod
    def default(cls) -> Client:
        """The process's default client, from ``$HOPPER_SERVER`` and ``$HOPPER_TOKEN`` (made
        on first use)."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = Client()
            return cls._default

    @classmethod
    def set_default(cls, client: Client | None) -> None:
        """Makes ``client`` the default (``None``: read the environment again on next use)."""
        with cls._default_lock:
            cls._default = client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the synchronous connections (asyncio ones close with their loop)."""
        with self._lock:
            if self._sync is not None:
                self._sync.close()
                self._sync = None

    # -- transport

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(max_connections=200, max_keepalive_connections=50)

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._sync is None:
                self._sync = httpx.Client(
                    verify=_trusted(),
                    headers=self._headers,
                    limits=self._limits(),
                    timeout=httpx.Timeout(self.timeout, connect=10.0),
                )
            return self._sync

    def _ahttp(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._aio.get(loop)
        if client is None:
            client = httpx.AsyncClient(
                verify=_trusted(),
                headers=self._headers,
                limits=self._limits(),
                timeout=httpx.Timeout(self.timeout, connect=10.0),
            )
            self._aio[loop] = client
        return client

    def _backoff(self, attempt: int) -> float:
        return float(min(0.1 * 3**attempt, 3.0))

    def _check(self, response: httpx.Response, blobs: bool = True) -> Any:
        if response.status_code < 300:
            if response.status_code == 204 or not response.content:
                return None
            try:
                return _codec.loads(response.content, self._fetch_blob if blobs else None)
            except Error:
                raise
            except ValueError as e:
                raise ServerError(f"the server's answer is not JSON: {e}", response.status_code) from None
        raise _error_from(response, self._token_hint)

    def _put_blob(self, data: bytes) -> dict[str, Any]:
        """Stores ``data`` as a blob (``POST /v1/blobs``, the bytes as they are) and returns
        its reference; the retries and errors of any request (``InvalidInputError`` over the
        server's ``--max-blob``)."""
        req = _Req("POST", "/v1/blobs", body=None, timeout=max(self.timeout, 60.0 + len(data) / 10e6))
        reference: dict[str, Any] = self._send(req, content=data, content_type="application/octet-stream")
        if not isinstance(reference, dict) or not isinstance(reference.get(_codec.BLOB_KEY), str):
            raise ServerError(f"the server stored a blob but answered {reference!r}", 200)
        return reference

    def _fetch_blob(self, digest: str) -> bytes:
        """The bytes of blob ``digest`` (``GET /v1/blobs/{digest}``), checked against it.

        Raises:
            ServerError: the bytes do not match the digest (a damaged blob).
            and the errors of any request (``NotFoundError`` for a blob not stored).
        """
        for attempt in range(self.retries):
            at = self.server
            try:
                response = self._http().get(
                    at + "/v1/blobs/" + digest, timeout=httpx.Timeout(None, connect=10.0)
                )
            except httpx.TransportError:
                self._fail_over(at)
                time.sleep(self._backoff(attempt))
                continue
            if response.status_code >= 300:
                raise _error_from(response, self._token_hint)
            data = response.content
            got = "sha256:" + hashlib.sha256(data).hexdigest()
            if got != digest:
                raise ServerError(
                    f"blob {digest} came back as {len(data)} bytes hashing to {got}: it is damaged", 200
                )
            return data
        raise ConnectionError(", ".join(self.servers), f"cannot fetch blob {digest}", self._server_hint)

    def _send(self, req: _Req, content: bytes | None = None, content_type: str | None = None) -> Any:
        """Sends ``req`` (its body, or ``content`` of ``content_type``), retrying on a broken
        connection or a 503 (moving to the next server when several are given); the answer
        decoded (an upload's answer, a blob reference, kept as it is)."""
        last = ""
        headers = {"content-type": content_type} if content_type else None
        for attempt in range(self.retries):
            at = self.server
            try:
                response = self._http().request(
                    req.method,
                    at + req.path,
                    content=req.body if content is None else content,
                    headers=headers,
                    params=req.params,
                    timeout=httpx.Timeout(
                        (req.timeout if req.timeout is not None else self.timeout), connect=10.0
                    ),
                )
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if _large(req) and not isinstance(e, httpx.ConnectError) and self._reachable():
                    raise _too_large(req) from None
                if content is not None and not isinstance(e, httpx.ConnectError) and self._reachable():
                    raise InvalidInputError(
                        f"the server broke off while receiving a {len(content):,}-byte blob: it is over "
                        "the server's limit (hopper serve --max-blob, default 1 GiB)",
                        "payload_too_large",
                        413,
                    ) from None
                self._fail_over(at)
                time.sleep(self._backoff(attempt))
                continue
            if response.status_code == 503 and attempt + 1 < self.retries:
                # A server that cannot serve now (its database is away, it is stopping): the
                # next try goes to the next server, if there are several.
                self._fail_over(at)
                time.sleep(self._backoff(attempt))
                continue
            return self._check(response, blobs=content is None)
        raise ConnectionError(", ".join(self.servers), last or "no answer", self._server_hint)

    def _reachable(self) -> bool:
        try:
            return self._http().get(self.server + "/healthz", timeout=5.0).status_code < 500
        except httpx.HTTPError:
            return False

    async def _areachable(self) -> bool:
        try:
            return (await self._ahttp().get(self.server + "/healthz", timeout=5.0)).status_code < 500
        except httpx.HTTPError:
            return False

    async def _asend(self, req: _Req) -> Any:
        last = ""
        for attempt in range(self.retries):
            at = self.server
            try:
                response = await self._ahttp().request(
                    req.method,
                    at + req.path,
                    content=req.body,
                    params=req.params,
                    timeout=httpx.Timeout(
                        (req.timeout if req.timeout is not None else self.timeout), connect=10.0
                    ),
                )
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if _large(req) and not isinstance(e, httpx.ConnectError) and await self._areachable():
                    raise _too_large(req) from None
                self._fail_over(at)
                await asyncio.sleep(self._backoff(attempt))
                continue
            if response.status_code == 503 and attempt + 1 < self.retries:
                self._fail_over(at)
                await asyncio.sleep(self._backoff(attempt))
                continue
            if _codec.BLOB_KEY.encode() in response.content:
                # Refers to blobs: fetched in a thread, off the event loop.
                return await asyncio.to_thread(self._check, response)
            return self._check(response)
        raise ConnectionError(", ".join(self.servers), last or "no answer", self._server_hint)

    # -- drivers

    def _run(self, plan: Plan[R]) -> R:
        try:
            op: Any = next(plan)
            while True:
                try:
                    answer = self._send(op)
                except Error as e:
                    op = plan.throw(e)
                else:
                    op = plan.send(answer)
        except StopIteration as stop:
            result: R = stop.value
            return result

    async def _arun(self, plan: Plan[R]) -> R:
        try:
            op: Any = next(plan)
            while True:
                try:
                    answer = await self._asend(op)
                except Error as e:
                    op = plan.throw(e)
                else:
                    op = plan.send(answer)
        except StopIteration as stop:
            result: R = stop.value
            return result

    def _cancel_quietly(self, call_id: str) -> None:
        try:
            self._http().post(self.server + _call_path(call_id, "cancel"), content="{}", timeout=5.0)
        except Exception:
            pass

    async def _acancel_quietly(self, call_id: str) -> None:
        try:
            await self._ahttp().post(self.server + _call_path(call_id, "cancel"), content="{}", timeout=5.0)
        except Exception:
            pass

    def _iterate(
        self, plan: Plan[None], state: _MapState, inputs: Iterator[str], progress: _Progress | None = None
    ) -> Iterator[Any]:
        try:
            op = next(plan)
            while True:
                if progress is not None:
                    progress.update(state, waiting=isinstance(op, _Req))
                if isinstance(op, _Emit):
                    if progress is not None:
                        progress.clear()
                    yield _codec.decode(op.value) if not isinstance(op.value, Error) else op.value
                    op = plan.send(None)
                elif isinstance(op, _Pull):
                    op = plan.send(list(itertools.islice(inputs, op.n)))
                else:
                    try:
                        answer = self._send(op)
                    except Error as e:
                        op = plan.throw(_naming_map(e, state))
                    else:
                        op = plan.send(answer)
        except StopIteration:
            return
        finally:
            plan.close()
            if progress is not None:
                progress.close(state)
            if state.call_id is not None and not state.finished:
                self._cancel_quietly(state.call_id)

    def _aiterate(
        self,
        plan: Plan[None],
        state: _MapState,
        inputs: Iterator[str] | AsyncIterator[str],
        progress: _Progress | None = None,
    ) -> AsyncIterator[Any]:
        return _AsyncMap(self._agenerate(plan, state, inputs, progress), self, state)

    async def _agenerate(
        self,
        plan: Plan[None],
        state: _MapState,
        inputs: Iterator[str] | AsyncIterator[str],
        progress: _Progress | None = None,
    ) -> AsyncIterator[Any]:
        try:
            op = next(plan)
            while True:
                if progress is not None:
                    progress.update(state, waiting=isinstance(op, _Req))
                if isinstance(op, _Emit):
                    if progress is not None:
                        progress.clear()
                    yield _codec.decode(op.value) if not isinstance(op.value, Error) else op.value
                    op = plan.send(None)
                elif isinstance(op, _Pull):
                    if isinstance(inputs, AsyncIterator):
                        chunk = []
                        async for item in inputs:
                            chunk.append(item)
                            if len(chunk) >= op.n:
                                break
                    else:
                        chunk = list(itertools.islice(inputs, op.n))
                    op = plan.send(chunk)
                else:
                    try:
                        answer = await self._asend(op)
                    except Error as e:
                        op = plan.throw(_naming_map(e, state))
                    else:
                        op = plan.send(answer)
        except StopIteration:
            return
        finally:
            plan.close()
            if progress is not None:
                progress.close(state)
            if state.call_id is not None and not state.finished and not state.cancel_sent:
                state.cancel_sent = True
                await self._acancel_quietly(state.call_id)

    # -- conveniences

    def function(self, name: str) -> Function:
        """The deployed function ``name`` (``app.function``), called through this client."""
        return Function.from_name(name, client=self)

    def call(self, call_id: str) -> FunctionCall:
        """A handle on the call ``call_id``, through this client."""
        return FunctionCall.from_id(call_id, client=self)

    def deploy(self, path: str, *, snapshot: bool = True, max_bundle: int | None = None) -> dict[str, Any]:
        """Deploys the app defined in the Python file ``path``; returns the app version
        (``{"name", "version", "functions": [...], "snapshot": {...}}``).

        With ``snapshot`` (the default) the file's folder is shipped as the version's code
        snapshot, uploaded only if the server does not have it yet, so calls run the code as
        it is now on any worker machine; without, workers run the files in that folder on
        their own machine.

        Args:
            max_bundle: most bytes of files the snapshot may hold (default 64 MiB).

        Raises:
            DeployError: the app breaks a rule (named with the function and ``file:line``).
            ValueError: the folder holds more than ``max_bundle`` (the biggest files named), or
                a link in it points outside it.
            InvalidInputError: the server refused the manifest.
        """
        from . import _snapshot
        from ._deploy import at_decorators, check_locally, deploy_request, load_app, sdk_files

        path = os.path.abspath(path)
        # The manifest's faults are found before a server is asked (or needed).
        check_locally(load_app(path), deploy_request(path, snapshot="" if snapshot else None))
        bundle = None
        if snapshot:
            limit = max_bundle if max_bundle is not None else _snapshot.DEFAULT_MAX_BYTES
            # Functions with requirements import the SDK the snapshot carries.
            sdk = sdk_files() if load_app(path).requirements else []
            bundle = _snapshot.build(os.path.dirname(path), limit, sdk)
            self._store_snapshot(bundle)
        body = _codec.dumps(deploy_request(path, snapshot=bundle.hash if bundle else None))
        try:
            result: dict[str, Any] = self._send(_Req("POST", "/v1/apps", body=body))
        except InvalidInputError as e:
            # The server names lines of the manifest it was sent: point at the decorators.
            moved = at_decorators(load_app(path), str(e))
            if moved is None:
                raise
            raise DeployError(moved) from None
        if bundle is not None:
            result["snapshot"] = {"hash": bundle.hash, "files": bundle.files}
        return result

    def _store_snapshot(self, bundle: Any) -> None:
        """Uploads a snapshot unless the server has it already."""
        path = f"/v1/snapshots/{bundle.hash}"
        try:
            self._send(_Req("GET", path))
            return
        except NotFoundError:
            pass
        response = self._http().put(
            self.server + path,
            content=bundle.data,
            headers={"content-type": "application/gzip"},
            timeout=httpx.Timeout(max(self.timeout, 120.0), connect=10.0),
        )
        self._check(response)


class _AsyncMap:
    """The async iterator of ``map.aio``: the results, and the map's remaining inputs cancelled
    as soon as the loop is left.

    An async generator left by ``break`` is closed only when its event loop gets to it, and an
    ``asyncio.run`` that ends first never does; this object cancels the map (synchronously, a
    short request) when it is dropped instead.
    """

    def __init__(self, results: AsyncIterator[Any], client: Client, state: _MapState) -> None:
        self._results = results
        self._client = client
        self._state = state

    def __aiter__(self) -> _AsyncMap:
        return self

    async def __anext__(self) -> Any:
        return await self._results.__anext__()

    async def aclose(self) -> None:
        """Ends the map now (``contextlib.aclosing``): its remaining inputs are cancelled."""
        close = getattr(self._results, "aclose", None)
        if close is not None:
            await close()

    def __del__(self) -> None:
        state = self._state
        if state.call_id is not None and not state.finished and not state.cancel_sent:
            state.cancel_sent = True
            self._client._cancel_quietly(state.call_id)


def _encode_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], what: str = "the input", put: _codec.Put | None = None
) -> str:
    return _codec.dumps(_codec.encode_args(args, kwargs), what, put)


def _encode_inputs(
    iterables: tuple[Iterable[Any], ...], what: str, put: _codec.Put | None = None
) -> Iterator[str]:
    """The JSON inputs of a map over ``iterables`` (zipped when several: one argument from
    each), encoded as they are read; an input that cannot be raises :class:`EncodeError`
    naming it (``what`` and its index)."""
    items: Iterable[Any] = iterables[0] if len(iterables) == 1 else zip(*iterables, strict=False)
    several = len(iterables) > 1
    return (_encode_input(tuple(x) if several else (x,), {}, f"{what} {i}", put) for i, x in enumerate(items))


class _NeedsBlob(Exception):
    """Raised by the ``put`` of an encoding on the event loop: the input holds bytes to store
    as a blob, an upload to make in a thread."""


def _no_put(data: bytes) -> dict[str, Any]:
    raise _NeedsBlob


async def _aencode_input(args: tuple[Any, ...], kwargs: dict[str, Any], what: str, put: _codec.Put) -> str:
    """:func:`_encode_input` without holding up the event loop: encoded on it, unless the input
    needs a blob stored; then encoded again in a thread, which makes the upload."""
    try:
        return _encode_input(args, kwargs, what, _no_put)
    except _NeedsBlob:
        return await asyncio.to_thread(_encode_input, args, kwargs, what, put)


async def _aencode_inputs(
    iterables: tuple[Iterable[Any], ...], what: str, put: _codec.Put
) -> AsyncIterator[str]:
    """:func:`_encode_inputs` with :func:`_aencode_input`: the iterables are read on the event
    loop, and only blob uploads leave it."""
    items: Iterable[Any] = iterables[0] if len(iterables) == 1 else zip(*iterables, strict=False)
    several = len(iterables) > 1
    for i, x in enumerate(items):
        yield await _aencode_input(tuple(x) if several else (x,), {}, f"{what} {i}", put)


def _spawn_many_args(
    inputs: Iterable[Any], keys: Iterable[str] | None, put: _codec.Put | None = None
) -> tuple[list[str], list[str]]:
    """A bulk spawn's encoded inputs and their keys (given, or new ones)."""
    texts = list(_encode_inputs((inputs,), "spawn_many input", put))
    return texts, _spawn_many_keys(texts, keys)


def _spawn_many_keys(texts: list[str], keys: Iterable[str] | None) -> list[str]:
    """The keys of a bulk spawn of ``texts``: those given, checked, or new ones."""
    if keys is None:
        return [f"py-{uuid.uuid4()}" for _ in texts]
    if isinstance(keys, (str, bytes)):
        raise ValueError("idempotency_keys is one key per input (a list of strings), not one string")
    given = list(keys)
    if len(given) != len(texts):
        raise ValueError(
            f"idempotency_keys must hold one key per input: {len(texts)} inputs, {len(given)} keys"
        )
    for i, k in enumerate(given):
        if not isinstance(k, str) or not k:
            raise ValueError(f"idempotency_keys[{i}] must be a non-empty string, not {k!r}")
    return given


class Function:
    """A deployed function, by name. Made with :meth:`from_name`; no I/O until it is called.

    ``spawn``, ``spawn_many``, ``remote``, ``map``, ``starmap`` and ``for_each`` each have an
    asyncio twin under ``.aio``.

    Arguments become the function's JSON input: ``f.remote(x)`` sends ``x``; several
    positional arguments travel as ``{"$args": [...]}``, with keyword arguments as
    ``{"$args": [...], "$kwargs": {...}}`` (see ``docs/PYTHON.md``).
    """

    def __init__(self, name: str, client: Client | None = None) -> None:
        self.name = name
        self._client = client
        self._idempotency_key: str | None = None
        self._start = ""
        self.spawn = _Twin(self._spawn, self._spawn_aio)
        self.spawn_many = _Twin(self._spawn_many, self._spawn_many_aio)
        self.remote = _Twin(self._remote, self._remote_aio)
        self.map = _Twin(self._map, self._map_aio)
        self.starmap = _Twin(self._starmap, self._starmap_aio)
        self.for_each = _Twin(self._for_each, self._for_each_aio)

    @classmethod
    def from_name(cls, name: str, *, client: Client | None = None) -> Function:
        """The deployed function ``name``: ``"app.function"``, ``"app.Class.method"``, or a
        bare function name unique across apps. No I/O: an unknown name raises
        :class:`hopper.exception.FunctionNotFoundError` on the first call.

        Args:
            name: the function's name.
            client: the client to call through (default :meth:`Client.default`).
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a function name is 'app.function', not {name!r}")
        return cls(name.strip(), client)

    @property
    def client(self) -> Client:
        """The client this function is called through."""
        return self._client or Client.default()

    def __repr__(self) -> str:
        return f"hopper.Function({self.name!r})"

    def with_options(
        self,
        *,
        idempotency_key: str | None = None,
        delay: str | float | datetime.timedelta | None = None,
        start_at: str | datetime.datetime | None = None,
        key: str | None = None,
        priority: int | None = None,
    ) -> Function:
        """This function with options for the calls made through what it returns.

        Args:
            idempotency_key: the key of the call ``spawn`` or ``remote`` makes: 1 to 255
                visible ASCII characters (no spaces). A key used before with the same input
                answers the call it made instead of making another, so a retried request (a
                web handler run twice, an Airflow task retried) never runs the work twice;
                with another input, or for another function, it is refused
                (:class:`InvalidInputError`, naming that call). Keys belong to the whole
                server (prefix them with the function or app) and are kept as long as their
                calls (the server's retention period).
            delay: start each call (each of ``spawn_many``'s, a whole map) this long from now:
                ``"10m"``, seconds, or a :class:`datetime.timedelta` (at most a year). The call
                is stored at once, ``pending`` until then (``FunctionCall.info()["starts_at"]``),
                and can be cancelled before it starts; it survives a server restart.
            start_at: start them at this time instead: an aware :class:`datetime.datetime` or
                an RFC 3339 string (not in the past, at most a year ahead).
            key: the calls' key (a tenant, a customer; 1 to 200 bytes of UTF-8, no control
                characters): their inputs are one group under the function's ``limits``
                (``max_running_per_key``, ``rate_per_key``), and groups take turns. Without
                it, the function's ``limits.key`` takes each input's key from the input.
            priority: -1000 to 1000; higher runs first (within a key). Without it, the
                function's ``priority`` (default 0).

        Returns:
            a new :class:`Function`; this one is unchanged.

        Raises:
            ValueError: the idempotency key or key is not such a string, or the priority not
                such an integer; delay and start_at are both given, or one is not a duration
                or a time (the server refuses a time in the past or over a year ahead:
                :class:`InvalidInputError`).
        """
        if idempotency_key is not None:
            _check_key(idempotency_key, "idempotency_key")
        bound = Function(self.name, self._client)
        bound._idempotency_key = idempotency_key
        bound._start = _start_fields(delay, start_at) + _queue_fields(key, priority)
        return bound

    def _one_call_only(self, what: str) -> None:
        """Refuses a call of many inputs through a function bound to one idempotency key."""
        if self._idempotency_key is not None:
            raise ValueError(
                f"{what} makes a call per input, and with_options(idempotency_key=...) names one "
                "call: give spawn_many(idempotency_keys=[...]) one key per input instead"
            )

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Not available on a function found by name: its code is not in this process. Call
        ``.local()`` on the object ``@app.function`` returned.

        Raises:
            hopper.exception.Error: always.
        """
        raise Error(
            f"{self.name}: local() needs the function's code; call it on the object that "
            "@app.function returned"
        )

    def _spawn(self, *args: Any, **kwargs: Any) -> FunctionCall:
        """Spawns a call with these arguments and returns at once.

        Returns:
            a :class:`FunctionCall`; store its ``object_id`` to poll it later from anywhere.

        Raises:
            FunctionNotFoundError: no such function is deployed.
            EncodeError: an argument cannot be encoded as JSON.
            InvalidInputError: the server refused the input (e.g. over its size limit).
            ConnectionError, AuthError: the server cannot be reached, or refused the token.
        """
        client = self.client
        call = client._run(
            _spawn_plan(
                self.name,
                _encode_input(args, kwargs, put=client._put_blob),
                key=self._idempotency_key,
                start=self._start,
            )
        )
        return FunctionCall(call["id"], client)

    async def _spawn_aio(self, *args: Any, **kwargs: Any) -> FunctionCall:
        client = self.client
        call = await client._arun(
            _spawn_plan(
                self.name,
                await _aencode_input(args, kwargs, "the input", client._put_blob),
                key=self._idempotency_key,
                start=self._start,
            )
        )
        return FunctionCall(call["id"], client)

    def _spawn_many(
        self, inputs: Iterable[Any], *, idempotency_keys: Iterable[str] | None = None
    ) -> list[FunctionCall]:
        """Spawns one call per input (each input one argument, as with :meth:`spawn`), 1,000 to
        a request, and returns at once: a bulk spawn, far faster than a loop of spawns.

        Each request is one transaction on the server: a request that fails made none of its
        calls (those of the requests before it stay).

        Args:
            inputs: the inputs, read and encoded before anything is sent.
            idempotency_keys: one key per input (default: a new key each); a key used before
                answers the call it made, so running the same spawn again makes nothing twice.

        Returns:
            one :class:`FunctionCall` per input, in order.

        Raises:
            ValueError: ``idempotency_keys`` does not hold one non-empty string per input.
            EncodeError: an input cannot be encoded as JSON (naming its index); nothing is sent.
            and everything :meth:`spawn` raises; the exception's ``spawned`` holds the ids of
            the calls made by the requests before the one that failed, and a note says which
            inputs that request held.
        """
        client = self.client
        self._one_call_only("spawn_many")
        texts, keys = _spawn_many_args(inputs, idempotency_keys, client._put_blob)
        plan = _spawn_many_plan(self.name, texts, keys, self._start)
        return [FunctionCall(i, client) for i in client._run(plan)]

    async def _spawn_many_aio(
        self, inputs: Iterable[Any], *, idempotency_keys: Iterable[str] | None = None
    ) -> list[FunctionCall]:
        client = self.client
        self._one_call_only("spawn_many")
        texts = [t async for t in _aencode_inputs((inputs,), "spawn_many input", client._put_blob)]
        keys = _spawn_many_keys(texts, idempotency_keys)
        ids = await client._arun(_spawn_many_plan(self.name, texts, keys, self._start))
        return [FunctionCall(i, client) for i in ids]

    def _remote(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the function with these arguments and waits for its output.

        Returns:
            the function's output (JSON, with ``bytes`` decoded).

        Raises:
            InputFailedError: the input failed (a subclass of the remote built-in exception
                type when there is one, e.g. ``ValueError``); FunctionTimeoutError when an
                attempt ran past the function's timeout.
            InputCancelledError: the call was cancelled.
            and everything :meth:`spawn` raises.
        """
        client = self.client
        plan = _remote_plan(
            self.name, _encode_input(args, kwargs, put=client._put_blob), self._idempotency_key, self._start
        )
        return _codec.decode(client._run(plan))

    async def _remote_aio(self, *args: Any, **kwargs: Any) -> Any:
        client = self.client
        plan = _remote_plan(
            self.name,
            await _aencode_input(args, kwargs, "the input", client._put_blob),
            self._idempotency_key,
            self._start,
        )
        return _codec.decode(await client._arun(plan))

    def _map_run(
        self, ordered: bool, return_exceptions: bool, discard: bool, chunk_size: int, max_outstanding: int
    ) -> tuple[Plan[None], _MapState]:
        """The plan of a map of this function, and the state it shares with its driver."""
        self._one_call_only("a map")
        state = _MapState()
        plan = _map_plan(
            self.name,
            state,
            ordered=ordered,
            return_exceptions=return_exceptions,
            discard=discard,
            chunk_size=max(1, chunk_size),
            max_outstanding=max(1, max_outstanding),
            start=self._start,
        )
        return plan, state

    def _map(
        self,
        *iterables: Iterable[Any],
        order_outputs: bool = True,
        return_exceptions: bool = False,
        chunk_size: int = 1000,
        max_outstanding: int = 10_000,
        progress: bool | None = None,
    ) -> Iterator[Any]:
        """Runs the function over inputs, streaming: yields each output as soon as it (and,
        in order, every one before it) is available.

        Args:
            iterables: one iterable, or several zipped (one argument from each per call).
            order_outputs: yield in input order (default) or as inputs end.
            return_exceptions: yield a failed input's exception in its place instead of
                raising it.
            chunk_size: inputs per upload request.
            max_outstanding: most inputs sent but without a result yet (backpressure:
                the iterables are read only as results come back).
            progress: show the map's progress on stderr (inputs done, of how many, the rate),
                one line redrawn in place; default: when stderr is a terminal.

        Raises:
            InputFailedError: the first failed input, without ``return_exceptions`` (the
                map's other inputs are cancelled).
            and everything :meth:`spawn` raises. Leaving the loop early (``break``, an
            exception, ``KeyboardInterrupt``) cancels the map's remaining inputs.
        """
        encoded = _encode_inputs(iterables, "map input", self.client._put_blob)
        shown = _Progress(self.name, _total(iterables), progress)
        return self._stream(
            encoded, order_outputs, return_exceptions, False, chunk_size, max_outstanding, shown
        )

    def _stream(
        self,
        encoded: Iterator[str],
        ordered: bool,
        return_exceptions: bool,
        discard: bool,
        chunk_size: int,
        max_outstanding: int,
        progress: _Progress | None = None,
    ) -> Iterator[Any]:
        plan, state = self._map_run(ordered, return_exceptions, discard, chunk_size, max_outstanding)
        return self.client._iterate(plan, state, encoded, progress)

    def _astream(
        self,
        encoded: Iterator[str] | AsyncIterator[str],
        ordered: bool,
        return_exceptions: bool,
        discard: bool,
        chunk_size: int,
        max_outstanding: int,
        progress: _Progress | None = None,
    ) -> AsyncIterator[Any]:
        plan, state = self._map_run(ordered, return_exceptions, discard, chunk_size, max_outstanding)
        return self.client._aiterate(plan, state, encoded, progress)

    def _map_aio(
        self,
        *iterables: Iterable[Any] | AsyncIterable[Any],
        order_outputs: bool = True,
        return_exceptions: bool = False,
        chunk_size: int = 1000,
        max_outstanding: int = 10_000,
        progress: bool | None = None,
    ) -> AsyncIterator[Any]:
        if len(iterables) == 1 and isinstance(iterables[0], AsyncIterable):
            source = iterables[0]

            async def encode_async() -> AsyncIterator[str]:
                i = 0
                async for x in source:
                    yield await _aencode_input((x,), {}, f"map input {i}", self.client._put_blob)
                    i += 1

            encoded: Iterator[str] | AsyncIterator[str] = encode_async()
        else:
            sync_items = [i for i in iterables if isinstance(i, Iterable)]
            if len(sync_items) != len(iterables):
                raise TypeError("map.aio zips several iterables only when none is async")
            encoded = _aencode_inputs(tuple(sync_items), "map input", self.client._put_blob)
        shown = _Progress(self.name, _total(iterables), progress)
        return self._astream(
            encoded, order_outputs, return_exceptions, False, chunk_size, max_outstanding, shown
        )

    def _starmap(
        self,
        items: Iterable[Iterable[Any]],
        *,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        chunk_size: int = 1000,
        max_outstanding: int = 10_000,
        progress: bool | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`map`, with each item unpacked into positional arguments:
        ``f.starmap([(1, 2), (3, 4)])`` calls ``f(1, 2)`` and ``f(3, 4)``."""
        encoded = (
            _encode_input(tuple(x), {}, f"starmap input {i}", self.client._put_blob)
            for i, x in enumerate(items)
        )
        shown = _Progress(self.name, _total((items,)), progress)
        return self._stream(
            encoded, order_outputs, return_exceptions, False, chunk_size, max_outstanding, shown
        )

    def _starmap_aio(
        self,
        items: Iterable[Iterable[Any]],
        *,
        order_outputs: bool = True,
        return_exceptions: bool = False,
        chunk_size: int = 1000,
        max_outstanding: int = 10_000,
        progress: bool | None = None,
    ) -> AsyncIterator[Any]:
        put = self.client._put_blob

        async def encode() -> AsyncIterator[str]:
            for i, x in enumerate(items):
                yield await _aencode_input(tuple(x), {}, f"starmap input {i}", put)

        encoded = encode()
        shown = _Progress(self.name, _total((items,)), progress)
        return self._astream(
            encoded, order_outputs, return_exceptions, False, chunk_size, max_outstanding, shown
        )

    def _for_each(
        self,
        *iterables: Iterable[Any],
        ignore_exceptions: bool = False,
        chunk_size: int = 1000,
        max_outstanding: int = 10_000,
        progress: bool | None = None,
    ) -> None:
        """Runs the function over inputs like :meth:`map`, keeps no outputs (the server
        stores none), and returns once every input has ended.

        Args:
            ignore_exceptions: carry on past failed inputs instead of raising the first.
            progress: as for :meth:`map`.

        Raises:
            InputFailedError: the first failed input, unless ``ignore_exceptions``.
        """
        encoded = _encode_inputs(iterables, "map input", self.client._put_blob)
        shown = _Progress(self.name, _total(iterables), progress)
        for _ in self._stream(encoded, False, ignore_exceptions, True, chunk_size, max_outstanding, shown):
            pass

    async def _for_each_aio(
        self,
        *iterables: Iterable[Any],
        ignore_exceptions: bool = False,
        chunk_size: int = 1000,
        max_outstanding: int = 10_000,
        progress: bool | None = None,
    ) -> None:
        encoded = _aencode_inputs(iterables, "map input", self.client._put_blob)
        shown = _Progress(self.name, _total(iterables), progress)
        async for _ in self._astream(
            encoded, False, ignore_exceptions, True, chunk_size, max_outstanding, shown
        ):
            pass


def _info_req(call_id: str, wait: float) -> _Req:
    wait = min(max(0.0, float(wait)), 300.0)
    if wait == 0:
        return _Req("GET", _call_path(call_id))
    return _Req("GET", _call_path(call_id), params={"wait": round(wait, 3)}, timeout=wait + 30)


class FunctionCall:
    """A handle on one call: a spawn, a map or a schedule firing.

    ``object_id`` (``"hc-..."``) is the id to store; :meth:`from_id` rebuilds the handle in any
    process. ``get`` and ``cancel`` have asyncio twins under ``.aio``.
    """

    def __init__(self, object_id: str, client: Client | None = None) -> None:
        self.object_id = object_id
        self._client = client
        self.get = _Twin(self._get, self._get_aio)
        self.cancel = _Twin(self._cancel, self._cancel_aio)
        self.info = _Twin(self._info, self._info_aio)

    @classmethod
    def from_id(cls, call_id: str, *, client: Client | None = None) -> FunctionCall:
        """A handle on the call ``call_id`` (no I/O).

        Args:
            call_id: a call id, ``"hc-..."``.
            client: the client to use (default :meth:`Client.default`).
        """
        if not isinstance(call_id, str) or not call_id.strip():
            raise ValueError(f"a call id looks like 'hc-...', not {call_id!r}")
        return cls(call_id.strip(), client)

    @property
    def client(self) -> Client:
        """The client this call is read through."""
        return self._client or Client.default()

    def __repr__(self) -> str:
        return f"hopper.FunctionCall({self.object_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FunctionCall) and other.object_id == self.object_id

    def __hash__(self) -> int:
        return hash(self.object_id)

    def _get(self, timeout: float | None = None) -> Any:
        """Waits for the call to end and returns its output (for a map: the list of its
        outputs, in input order). Reading does not consume it: ``get`` again returns the same.

        Args:
            timeout: seconds to wait; ``None`` (default) waits until the call ends, by
                repeated long-polls; ``0`` asks once without waiting.

        Raises:
            CallTimeoutError: the call has not ended within ``timeout`` (also a built-in
                ``TimeoutError``); it goes on.
            InputFailedError: the call failed (FunctionTimeoutError for an attempt timeout).
            InputCancelledError: the call was cancelled.
            CallNotFoundError: no such call (or it was pruned after the retention period).
        """
        client = self.client
        return _codec.decode(client._run(_get_plan(self.object_id, timeout)))

    async def _get_aio(self, timeout: float | None = None) -> Any:
        client = self.client
        return _codec.decode(await client._arun(_get_plan(self.object_id, timeout)))

    def _cancel(self) -> None:
        """Cancels the call: its pending inputs never run, running ones are stopped, none is
        retried. Cancelling a call that ended changes nothing.

        Raises:
            CallNotFoundError: no such call.
        """
        self.client._send(_Req("POST", _call_path(self.object_id, "cancel"), body="{}"))

    async def _cancel_aio(self) -> None:
        await self.client._asend(_Req("POST", _call_path(self.object_id, "cancel"), body="{}"))

    def _info(self, wait: float = 0.0) -> dict[str, Any]:
        """The call as the server shows it (``GET /v1/calls/{id}``): ``state`` (``pending``,
        ``running``, ``succeeded``, ``failed``, ``cancelled``), ``function``, ``origin``,
        ``inputs`` counts by state, ``attempts``, and once ended ``output`` or ``error``
        (``{"code", "message"}``) for a one-input call; while the function's limits hold its
        inputs back, ``waiting`` says why (``"key acme at 2 running (max_running_per_key
        2)"``).

        Args:
            wait: seconds (at most 300) to hold the request while the call runs: the answer
                comes as soon as it ends, or after ``wait`` with its state then. ``0``
                (default) answers at once.

        Raises:
            CallNotFoundError: no such call.
        """
        result: dict[str, Any] = self.client._send(_info_req(self.object_id, wait))
        return result

    async def _info_aio(self, wait: float = 0.0) -> dict[str, Any]:
        result: dict[str, Any] = await self.client._asend(_info_req(self.object_id, wait))
        return result

    @staticmethod
    def gather(*calls: FunctionCall, timeout: float | None = None) -> list[Any]:
        """Waits for every call and returns their outputs in order; raises the first failure.

        Args:
            timeout: seconds to wait for each call (default: until it ends).
        """
        return [c.get(timeout=timeout) for c in calls]
