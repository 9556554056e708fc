""":class:`HopperCallSensor`: waits for a call spawned elsewhere (a web app, another DAG)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator  # type: ignore[import-not-found, unused-ignore]
from airflow.sdk.exceptions import AirflowException  # type: ignore[import-not-found, unused-ignore]

from .hooks import HopperHook
from .operators import HopperCallLink, raise_failed
from .triggers import HopperCallTrigger

__all__ = ["HopperCallSensor"]


class HopperCallSensor(BaseSensorOperator):  # type: ignore[misc, unused-ignore]
    """Waits until the call ``call_id`` ends; succeeds (pushing its output to XCom) if it
    succeeded, fails with :class:`~hopper.airflow.operators.HopperCallFailed` if it failed or
    was cancelled.

    Deferred by default: one trigger long-polls the server, no worker slot is held and
    ``poke_interval`` does not apply. With ``deferrable=False`` it pokes every
    ``poke_interval`` seconds (``mode="reschedule"`` frees the slot between pokes). The
    sensor's ``timeout`` bounds the wait either way. It never cancels the call: the call
    belongs to whoever spawned it.

    Args:
        call_id: the call's id, ``"hc-…"``; templated (e.g. from XCom or the run's conf).
        hopper_conn_id: the ``hopper`` connection (default ``hopper_default``).
        deferrable: wait in the triggerer (default).
    """

    template_fields: Sequence[str] = ("call_id",)
    operator_extra_links = (HopperCallLink(),)

    def __init__(
        self,
        *,
        call_id: str,
        hopper_conn_id: str = HopperHook.default_conn_name,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.call_id = call_id
        self.hopper_conn_id = hopper_conn_id
        self.deferrable = deferrable
        self.call_url: str | None = None

    @property
    def hook(self) -> HopperHook:
        return HopperHook(self.hopper_conn_id)

    def execute(self, context: Any) -> Any:
        self.call_url = self.hook.dashboard_url(self.call_id)
        if not self.deferrable:
            return super().execute(context)
        call = self.hook.get_call(self.call_id)
        if call.get("state") in ("succeeded", "failed", "cancelled"):
            return self._finish(call)
        self.defer(
            trigger=HopperCallTrigger(self.call_id, self.hopper_conn_id, cancel_on_kill=False),
            method_name="execute_complete",
            timeout=self.timeout if self.timeout else None,
        )

    def poke(self, context: Any) -> Any:
        call = self.hook.get_call(self.call_id)
        if call.get("state") not in ("succeeded", "failed", "cancelled"):
            return False
        from airflow.sdk import PokeReturnValue

        return PokeReturnValue(is_done=True, xcom_value=self._finish(call))

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        self.call_url = self.hook.dashboard_url(self.call_id)
        event = event or {}
        if event.get("status") != "ended":
            raise AirflowException(f"Hopper call {self.call_id}: {event.get('message')}")
        return self._finish(self.hook.get_call(self.call_id))

    def _finish(self, call: dict[str, Any]) -> Any:
        if call.get("state") != "succeeded":
            raise_failed(self.hook, call)
        return self.hook.output(call)
