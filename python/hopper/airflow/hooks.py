"""The ``hopper`` connection type and :class:`HopperHook`, the provider's way to a server."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from airflow.sdk import BaseHook  # type: ignore[import-not-found, unused-ignore]

from .. import _codec
from ..client import (
    Client,
    FunctionCall,
    _collect_plan,
    _map_start_plan,
    _Req,
    _spawn_plan,
)
from ..exception import Error

__all__ = ["HopperHook", "call_failed_message", "task_idempotency_key"]

#: Most calls one task walks through when earlier tries' calls failed (see :meth:`HopperHook.spawn`).
MAX_RESPAWNS = 1000
_ENDED = frozenset({"succeeded", "failed", "cancelled"})
_DEAD = frozenset({"failed", "cancelled"})


def _server_url(host: str | None, port: int | None, schema: str | None) -> str:
    """The server URL of a connection: ``host`` may be a whole URL (``http://box:7433``) or a
    name, with ``port`` and a ``schema`` of ``http`` (default) or ``https``."""
    host = (host or "").strip()
    if not host:
        return ""
    if "://" in host:
        return f"{host.rstrip('/')}:{port}" if port and host.count(":") < 2 else host
    scheme = schema if schema in ("http", "https") else "http"
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


def task_idempotency_key(dag_id: str, task_id: str, run_id: str, map_index: int, generation: int = 0) -> str:
    """The idempotency key of a task instance (``airflow-`` and 32 hex digits): the same for
    every retry of the task instance, so a retry finds the call an earlier try spawned.
    ``generation`` counts the times the task instance was cleared (Airflow's ``max_tries -
    retries``): a cleared task gets a new key, so clearing runs the function again."""
    parts = (dag_id, task_id, run_id, str(map_index), str(generation))
    return "airflow-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _digest(texts: Iterable[str]) -> str:
    """16 hex digits naming the encoded input(s): a key covers one input, never another."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def call_failed_message(call: dict[str, Any], dashboard: str, first_error: str = "") -> str:
    """One line for a call that failed or was cancelled: its code, message and page."""
    state = call.get("state")
    error = call.get("error") or {}
    code, message = error.get("code"), error.get("message") or ""
    inputs = call.get("inputs") or {}
    if call.get("origin") == "map":
        # The call's error is its first failed input's (at `failed_index`), when it has one.
        first = first_error
        if error:
            first = f"input {call.get('failed_index', '?')}: {code}: {message}"
        message = f"{inputs.get('failed', 0)} of {inputs.get('total', 0)} inputs failed"
        if first:
            message += f", the first: {first}"
        return f"Hopper call {call.get('id')} {state}: {message} (see {dashboard})"
    what = f"{code}: {message}" if code and code != state else message
    return f"Hopper call {call.get('id')} {state}: {what} (see {dashboard})"


class HopperHook(BaseHook):  # type: ignore[misc, unused-ignore]
    """Talks to a Hopper server through the connection ``hopper_conn_id``.

    The connection: type ``hopper``; host = the server's URL (``http://127.0.0.1:7433``, or a
    name with port and schema ``http``/``https``); password = a token (optional). As a URI:
    ``AIRFLOW_CONN_HOPPER_DEFAULT='hopper://:TOKEN@127.0.0.1:7433'``. Without a host the
    SDK's defaults apply (``$HOPPER_SERVER``, else ``http://127.0.0.1:7433``).

    Args:
        hopper_conn_id: the connection's id (default ``hopper_default``).
    """

    conn_name_attr = "hopper_conn_id"
    default_conn_name = "hopper_default"
    conn_type = "hopper"
    hook_name = "Hopper"

    def __init__(self, hopper_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.hopper_conn_id = hopper_conn_id
        self._client: Client | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form: a server URL and a token."""
        return {
            "hidden_fields": ["login", "extra"],
            "relabeling": {"host": "Server URL", "password": "Token", "schema": "Scheme"},
            "placeholders": {"host": "http://127.0.0.1:7433", "password": "(none)", "schema": "http"},
        }

    def _client_of(self, conn: Any) -> Client:
        server = _server_url(conn.host, conn.port, conn.schema)
        client = Client(server or None, conn.password or None)
        where = f"Airflow connection {self.hopper_conn_id!r}"
        client._server_hint = f"Set the host (and port) of {where} to its address."
        client._token_hint = f"set the token as the password of {where}"
        return client

    def get_conn(self) -> Client:
        """The SDK client of the connection (made once per hook).

        Raises:
            AirflowNotFoundException: no such connection.
            hopper.exception.InvalidInputError: its host is not an http(s) URL.
        """
        if self._client is None:
            self._client = self._client_of(self.get_connection(self.hopper_conn_id))
        return self._client

    async def aget_conn(self) -> Client:
        """:meth:`get_conn` for the triggerer's event loop."""
        if self._client is None:
            self._client = self._client_of(await self.aget_connection(self.hopper_conn_id))
        return self._client

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test" button: lists the server's functions."""
        try:
            functions = self.get_conn()._send(_Req("GET", "/v1/functions"))
        except Exception as e:
            return False, str(e)
        return True, f"connected to {self.get_conn().server}: {len(functions)} functions"

    def dashboard_url(self, call_id: str) -> str:
        """The call's page on the server's dashboard."""
        return f"{self.get_conn().server}/calls/{call_id}"

    def spawn(
        self,
        function: str,
        input: Any,
        key: str | None = None,
        on_replaced: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Spawns ``function`` with ``input`` (any JSON value; bytes travel as ``$bytes``) and
        returns the call (``GET /v1/calls/{id}``'s shape).

        With ``key``, the spawn is idempotent across tries: ``key`` and a digest of the input
        name a chain of calls (idempotency keys ``KEY-DIGEST-0``, ``-1``, ...); the first call
        of the chain that has not failed or been cancelled is attached to (it may be running
        or already succeeded), and a new call is spawned only where the chain ends. An Airflow
        retry thereby re-attaches to its earlier try's call, and spawns anew when that call
        failed or when the input is not the same.

        With ``on_replaced`` too, calls of ``function`` under ``key`` with another input that
        have not ended (an earlier try's, whose input rendered differently) are cancelled
        first, and ``on_replaced`` is told each one's id.

        Raises:
            hopper.exception.FunctionNotFoundError: no such function.
            hopper.exception.InvalidInputError: the input cannot be sent (e.g. over the size
                limit), or ``idempotency_conflict``: the key's call had another input.
            hopper.exception.ConnectionError, AuthError: as the SDK's ``spawn``.
        """
        client = self.get_conn()
        text = _codec.dumps(input, "the input", client._put_blob)
        if key is None:
            return client._run(_spawn_plan(function, text))
        chain = self.try_key(key, [text])
        if on_replaced is not None:
            for call_id in self.cancel_other_tries(function, key, chain):
                on_replaced(call_id)
        return self._first_alive(chain, _DEAD, lambda k: client._run(_spawn_plan(function, text, key=k)))

    def start_map(
        self,
        function: str,
        inputs: Iterable[Any],
        key: str | None = None,
        chunk_size: int = 1000,
        reuse_failed: bool = False,
        on_replaced: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Starts a map of ``function`` over ``inputs`` (one JSON value each), sends them all
        and closes it; returns the map's call. With ``key`` it is idempotent as :meth:`spawn`
        is (the digest covers every input, in order): a retry finds the map of the earlier try
        and sends only the inputs it lacks. ``reuse_failed`` attaches to a map that ended
        ``failed`` too (its failed inputs are results to whoever keeps them); a cancelled map
        is never reused. ``on_replaced`` as for :meth:`spawn`.

        Raises:
            hopper.exception.EncodeError: an input is not JSON (names its index).
            and what :meth:`spawn` raises.
        """
        client = self.get_conn()

        def encoded() -> Iterator[str]:
            for i, value in enumerate(inputs):
                yield _codec.dumps(value, f"map input {i}", client._put_blob)

        texts = list(encoded())

        def start(this_key: str | None) -> dict[str, Any]:
            return client._run(_map_start_plan(function, texts, this_key, chunk_size))

        if key is None:
            return start(None)
        dead = frozenset({"cancelled"}) if reuse_failed else _DEAD
        chain = self.try_key(key, texts)
        if on_replaced is not None:
            for call_id in self.cancel_other_tries(function, key, chain):
                on_replaced(call_id)
        return self._first_alive(chain, dead, start)

    @staticmethod
    def try_key(key: str, texts: Iterable[str]) -> str:
        """The key of the chain of calls :meth:`spawn` and :meth:`start_map` walk for ``key``
        and these encoded inputs: ``key``, a dash and 16 hex digits of their digest."""
        return f"{key}-{_digest(texts)}"

    def _first_alive(
        self, key: str, dead: frozenset[str], start: Callable[[str], dict[str, Any]]
    ) -> dict[str, Any]:
        """Walks the chain of calls ``KEY-0``, ``KEY-1``, ... (``start`` spawns or attaches by
        idempotency key) to the first call not in a ``dead`` state."""
        for n in range(MAX_RESPAWNS):
            call = start(f"{key}-{n}")
            if call.get("state") not in dead:
                return call
            self.log.info("call %s of an earlier try %s; starting another", call.get("id"), call.get("state"))
        raise RuntimeError(f"{MAX_RESPAWNS} calls under key {key} all failed or were cancelled")

    def cancel_other_tries(self, function: str, task_key: str, keep: str) -> list[str]:
        """Cancels the calls of ``function`` that an earlier try of the same task spawned with
        another input and that have not ended: those whose idempotency key starts with
        ``task_key`` but not with ``keep`` (this try's key and input digest). Returns their
        ids. Reads the function's pending and running calls, a page of 1,000 at a time.

        Raises:
            hopper.exception.ConnectionError, AuthError: as the SDK's requests.
        """
        client = self.get_conn()
        found: list[str] = []
        for state in ("pending", "running"):
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"function": function, "state": state, "limit": 1000}
                if cursor:
                    params["cursor"] = cursor
                page = client._send(_Req("GET", "/v1/calls", params=params))
                for call in page.get("calls", []):
                    key = call.get("idempotency_key") or ""
                    if key.startswith(f"{task_key}-") and not key.startswith(f"{keep}-"):
                        found.append(call["id"])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        for call_id in found:
            self.cancel(call_id)
        return found

    def get_call(self, call_id: str, wait: float = 0.0) -> dict[str, Any]:
        """The call now, or once it ended within ``wait`` seconds (at most 300)."""
        return FunctionCall(call_id, self.get_conn()).info(wait=wait)

    async def aget_call(self, call_id: str, wait: float = 0.0) -> dict[str, Any]:
        """:meth:`get_call` for the triggerer's event loop."""
        client = await self.aget_conn()
        return await FunctionCall(call_id, client).info.aio(wait=wait)

    def wait_call(self, call_id: str) -> dict[str, Any]:
        """Waits until the call ends (long-polls of 55 s) and returns it."""
        while True:
            call = self.get_call(call_id, wait=55)
            if call.get("state") in _ENDED:
                return call

    def output(self, call: dict[str, Any]) -> Any:
        """The output of ``call`` (as :meth:`get_call` returned it, ended): a one-input call's
        output; for a map the list of its inputs' outputs in input order, a failed input as
        ``{"error": {"code", "message"}, "index"}`` in its place.

        Raises:
            hopper.exception.InputFailedError: a one-input call that failed or was cancelled.
        """
        client = self.get_conn()
        if call.get("origin") != "map":
            return FunctionCall(call["id"], client).get(timeout=0)
        out: list[Any] = []
        for i, value in enumerate(client._run(_collect_plan(call["id"]))):
            if isinstance(value, Error):
                code = getattr(value, "code", type(value).__name__)
                message = getattr(value, "message", str(value))
                out.append({"error": {"code": code, "message": message}, "index": i})
            else:
                out.append(_codec.decode(value))
        return out

    def cancel(self, call_id: str) -> None:
        """Cancels the call's inputs that have not ended (nothing if it ended)."""
        FunctionCall(call_id, self.get_conn()).cancel()

    async def acancel(self, call_id: str) -> None:
        """:meth:`cancel` for the triggerer's event loop."""
        client = await self.aget_conn()
        await FunctionCall(call_id, client).cancel.aio()
