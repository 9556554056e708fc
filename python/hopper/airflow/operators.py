"""Operators that run Hopper functions: :class:`HopperOperator` (one call) and
:class:`HopperMapOperator` (one map), and :class:`HopperCallLink`, their extra link."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from airflow.sdk import BaseOperator, BaseOperatorLink  # type: ignore[import-not-found, unused-ignore]
from airflow.sdk.exceptions import AirflowException  # type: ignore[import-not-found, unused-ignore]

from .. import _codec
from .hooks import HopperHook, call_failed_message, task_idempotency_key
from .triggers import HopperCallTrigger

__all__ = ["HopperCallFailed", "HopperCallLink", "HopperMapOperator", "HopperOperator"]

#: Largest JSON text of a map's results pushed to XCom (1 MiB); above it give ``output_path``.
MAX_XCOM_BYTES = 1 << 20
_ENDED = frozenset({"succeeded", "failed", "cancelled"})


class HopperCallFailed(AirflowException):  # type: ignore[misc, unused-ignore]
    """The Hopper call failed or was cancelled: ``code`` and ``message`` are its error's (for a
    map, ``code`` is ``failed`` and the message counts the failed inputs), ``call_id`` is the
    call's id."""

    def __init__(self, message: str, call_id: str, code: str) -> None:
        super().__init__(message)
        self.call_id = call_id
        self.code = code


class HopperCallLink(BaseOperatorLink):  # type: ignore[misc, unused-ignore]
    """The "Hopper call" button: the task's call on the Hopper dashboard."""

    name = "Hopper call"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return str(getattr(operator, "call_url", None) or "")


def raise_failed(hook: HopperHook, call: dict[str, Any], first_error: str = "") -> NoReturn:
    """Raises :class:`HopperCallFailed` for ``call``, which failed or was cancelled."""
    error = call.get("error") or {}
    raise HopperCallFailed(
        call_failed_message(call, hook.dashboard_url(call["id"]), first_error),
        call["id"],
        str(error.get("code") or call.get("state")),
    )


def _task_key(context: Any) -> str:
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    # Airflow sets max_tries when the task instance is made (its retries) and when it is
    # cleared (the try number plus its retries), and leaves it alone across retries: each
    # clear is a new generation, and editing `retries` between a crash and its retry (which
    # changes task.retries, not max_tries) is not.
    generation = int(getattr(ti, "max_tries", 0) or 0)
    return task_idempotency_key(
        ti.dag_id, ti.task_id, ti.run_id, -1 if map_index is None else map_index, generation
    )


class _HopperBase(BaseOperator):  # type: ignore[misc, unused-ignore]
    operator_extra_links = (HopperCallLink(),)
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        function: str,
        hopper_conn_id: str = HopperHook.default_conn_name,
        deferrable: bool = True,
        poll_seconds: float = 55.0,
        cancel_on_kill: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.function = function
        self.hopper_conn_id = hopper_conn_id
        self.deferrable = deferrable
        self.poll_seconds = poll_seconds
        self.cancel_on_kill = cancel_on_kill
        self.call_id: str | None = None
        self.call_url: str | None = None

    @property
    def hook(self) -> HopperHook:
        return HopperHook(self.hopper_conn_id)

    def _attached(self, context: Any, call: dict[str, Any]) -> None:
        self.call_id = call["id"]
        self.call_url = self.hook.dashboard_url(call["id"])
        self.log.info("Hopper call %s (%s): %s", call["id"], call.get("state"), self.call_url)
        context["ti"].xcom_push(key="call_id", value=call["id"])
        context["ti"].xcom_push(key=HopperCallLink().xcom_key, value=self.call_url)

    def _replaced(self, call_id: str) -> None:
        """Says in the task log that an earlier try's call, spawned with an input that rendered
        differently and still running, was cancelled: one task instance runs one call."""
        self.log.warning(
            "Cancelled Hopper call %s of an earlier try of this task: its input rendered "
            "differently, so this try starts a new call (%s)",
            call_id,
            self.hook.dashboard_url(call_id),
        )

    def _wait(self, context: Any, call: dict[str, Any]) -> Any:
        """Defers until ``call`` ends (or waits here when not deferrable), then finishes."""
        if call.get("state") not in _ENDED:
            if self.deferrable:
                self.defer(
                    trigger=HopperCallTrigger(
                        call["id"], self.hopper_conn_id, self.poll_seconds, self.cancel_on_kill
                    ),
                    method_name="execute_complete",
                    timeout=self.execution_timeout,
                )
            call = self.hook.wait_call(call["id"])
        return self._finish(context, call)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resumes after the trigger fired: fails on an error event, else finishes."""
        event = event or {}
        call_id = str(event.get("call_id") or self.call_id)
        self.call_id, self.call_url = call_id, self.hook.dashboard_url(call_id)
        if event.get("status") != "ended":
            raise AirflowException(f"Hopper call {call_id}: {event.get('message')}")
        return self._finish(context, self.hook.get_call(call_id))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        """Airflow resumes a deferred task here. ``__fail__`` with the error "Trigger timeout"
        means the deferral ran past the task's ``execution_timeout``: the call is cancelled
        (with ``cancel_on_kill``) before the task fails. A trigger that failed otherwise leaves
        the call alone."""
        timed_out = next_method == "__fail__" and (next_kwargs or {}).get("error") == "Trigger timeout"
        if timed_out and self.cancel_on_kill:
            ti = context["ti"]
            call_id = ti.xcom_pull(task_ids=ti.task_id, key="call_id", map_indexes=ti.map_index)
            if call_id:
                self.log.info("the wait ran past execution_timeout: cancelling Hopper call %s", call_id)
                self.hook.cancel(str(call_id))
        return super().resume_execution(next_method, next_kwargs, context)

    def _finish(self, context: Any, call: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _raise_failed(self, call: dict[str, Any]) -> NoReturn:
        raise_failed(self.hook, call)

    def on_kill(self) -> None:
        """The task was stopped while waiting here (not deferred): cancel the call."""
        if self.call_id and self.cancel_on_kill:
            self.log.info("cancelling Hopper call %s", self.call_id)
            self.hook.cancel(self.call_id)


class HopperOperator(_HopperBase):
    """Runs ``function`` once with ``input`` and pushes its output to XCom (``return_value``;
    the call's id under ``call_id``).

    Deferred while the call runs (``deferrable=True``, the default): the triggerer long-polls
    the server and no worker slot is held. A call that fails or is cancelled fails the task
    with :class:`HopperCallFailed` (``"Hopper call hc-… failed: ValueError: … (see URL)"``).

    Retries are safe: the spawn's idempotency key is derived from the task instance (dag_id,
    task_id, run_id, map_index and the times it was cleared) and the input, so a retry after a
    crash attaches to the call the earlier try spawned while it runs or once it succeeded, and
    spawns a new call only if that one failed or was cancelled. A retry whose input rendered
    differently cancels the earlier try's call if it still runs (said in the task log) and
    starts its own. Clearing the task instance runs the function again.

    Args:
        function: ``"app.function"`` (or ``"app.Class.method"``); templated.
        input: the call's input as one JSON value: the function's one argument, as
            ``hopper run`` and the HTTP API send it; templated (rendered as native objects
            when the DAG sets ``render_template_as_native_obj``).
        op_args, op_kwargs: instead of ``input``, the function's arguments, positional and
            by name, as ``.remote(*op_args, **op_kwargs)`` passes them (PythonOperator's
            names); templated.
        hopper_conn_id: the ``hopper`` connection (default ``hopper_default``).
        deferrable: wait in the triggerer (default) or in the worker.
        poll_seconds: longest single long-poll of the call (at most 300; default 55).
        cancel_on_kill: cancel the call when the task is marked failed or succeeded, or cleared,
            while it waits (default true).
    """

    template_fields: Sequence[str] = ("function", "input", "op_args", "op_kwargs")
    template_fields_renderers = {"input": "json", "op_args": "py", "op_kwargs": "py"}

    def __init__(
        self,
        *,
        function: str,
        input: Any = None,
        op_args: Sequence[Any] | None = None,
        op_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(function=function, **kwargs)
        if input is not None and (op_args is not None or op_kwargs is not None):
            raise ValueError(f"{self.task_id}: give input= or op_args=/op_kwargs=, not both")
        self.input = input
        self.op_args = op_args
        self.op_kwargs = op_kwargs

    def execute(self, context: Any) -> Any:
        value = self.input
        if self.op_args is not None or self.op_kwargs is not None:
            value = _codec.encode_args(tuple(self.op_args or ()), dict(self.op_kwargs or {}))
        call = self.hook.spawn(self.function, value, key=_task_key(context), on_replaced=self._replaced)
        self._attached(context, call)
        return self._wait(context, call)

    def _finish(self, context: Any, call: dict[str, Any]) -> Any:
        if call.get("state") != "succeeded":
            self._raise_failed(call)
        return self.hook.output(call)


class HopperMapOperator(_HopperBase):
    """Runs ``function`` over ``inputs`` as one Hopper map (deferred while it runs) and pushes
    the outputs, in input order, to XCom as one list.

    A failed input fails the task (:class:`HopperCallFailed`, after the map ended) unless
    ``return_exceptions``: then it stands in the list as ``{"error": {"code", "message"},
    "index"}``. XCom lives in Airflow's database, so the results' JSON may be at most
    ``max_xcom_bytes`` (default 1 MiB); for more, give ``output_path`` (a local path or an
    object store URL Airflow's ``ObjectStoragePath`` opens, e.g. ``s3://bucket/key.jsonl``):
    the results are written there as JSON lines and the path is pushed instead. Like
    :class:`HopperOperator`, a retry attaches to the earlier try's map (sending only the
    inputs it lacks) unless that map failed or was cancelled.

    Args:
        function: ``"app.function"``; templated.
        inputs: a list of inputs, one JSON value each, or an XCom (``task.output``) that holds
            one; templated.
        return_exceptions: keep failed inputs' errors in the results instead of failing.
        output_path: write the results here instead of to XCom; templated.
        max_xcom_bytes: largest results pushed to XCom.
        and the arguments of :class:`HopperOperator` but ``input``.
    """

    template_fields: Sequence[str] = ("function", "inputs", "output_path")
    template_fields_renderers = {"inputs": "json"}

    def __init__(
        self,
        *,
        function: str,
        inputs: Any,
        return_exceptions: bool = False,
        output_path: str | None = None,
        max_xcom_bytes: int = MAX_XCOM_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(function=function, **kwargs)
        self.inputs = inputs
        self.return_exceptions = return_exceptions
        self.output_path = output_path
        self.max_xcom_bytes = max_xcom_bytes

    def execute(self, context: Any) -> Any:
        inputs = self.inputs
        if isinstance(inputs, str):
            try:
                inputs = json.loads(inputs)
            except ValueError:
                pass
        if not isinstance(inputs, (list, tuple)):
            raise AirflowException(
                f"HopperMapOperator inputs must be a list (one JSON value per input), not "
                f"{type(inputs).__name__}"
            )
        local = self._local_output()
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)  # fail now, not after the map
        call = self.hook.start_map(
            self.function,
            inputs,
            key=_task_key(context),
            reuse_failed=self.return_exceptions,
            on_replaced=self._replaced,
        )
        self._attached(context, call)
        return self._wait(context, call)

    def _local_output(self) -> Path | None:
        """``output_path`` when it names a local file (a path or ``file://``)."""
        if not self.output_path:
            return None
        if self.output_path.startswith("file://"):
            return Path(self.output_path.removeprefix("file://"))
        return None if "://" in self.output_path else Path(self.output_path)

    def _finish(self, context: Any, call: dict[str, Any]) -> Any:
        if call.get("state") == "cancelled":
            self._raise_failed(call)
        results = self.hook.output(call)
        if int((call.get("inputs") or {}).get("failed", 0)) and not self.return_exceptions:
            errors = [r for r in results if isinstance(r, dict) and set(r) == {"error", "index"}]
            first = errors[0] if errors else None
            where = (
                f"input {first['index']}: {first['error']['code']}: {first['error']['message']}"
                if first
                else ""
            )
            raise_failed(self.hook, {**call, "state": "failed"}, where)
        lines = [json.dumps(r, ensure_ascii=False) for r in results]
        if self.output_path:
            local = self._local_output()
            if local is not None:
                with local.open("w") as f:
                    f.writelines(line + "\n" for line in lines)
            else:
                from airflow.sdk import ObjectStoragePath

                with ObjectStoragePath(self.output_path).open("w") as f:
                    for line in lines:
                        f.write(line + "\n")
            self.log.info("%d results written to %s", len(lines), self.output_path)
            return self.output_path
        size = sum(len(line.encode()) + 1 for line in lines) + 1
        if size > self.max_xcom_bytes:
            raise AirflowException(
                f"the map's {len(lines)} results are {size:,} bytes of JSON, over max_xcom_bytes "
                f"({self.max_xcom_bytes:,}): give output_path= to write them to a file or an "
                f"object store instead (call {call['id']})"
            )
        return results
