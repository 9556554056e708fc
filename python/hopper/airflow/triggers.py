""":class:`HopperCallTrigger`: waits in the triggerer for a Hopper call to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent  # type: ignore[import-not-found, unused-ignore]

from ..exception import AuthError, CallNotFoundError, Error, InvalidInputError
from .hooks import HopperHook

__all__ = ["HopperCallTrigger"]

_ENDED = frozenset({"succeeded", "failed", "cancelled"})


class HopperCallTrigger(BaseTrigger):  # type: ignore[misc, unused-ignore]
    """Fires once the call ``call_id`` has ended: long-polls ``GET /v1/calls/{id}?wait=``
    (``poll_seconds`` at a time) on the triggerer's event loop, so no worker slot is held.

    The event's payload: ``{"status": "ended", "call_id", "state"}`` (``state`` is
    ``succeeded``, ``failed`` or ``cancelled``), or ``{"status": "error", "call_id",
    "message"}`` when the call cannot be read (gone, or the server refuses the token). An
    unreachable server is retried with backoff (at most 30 s apart) until the deferral's
    timeout: the operator's ``execution_timeout`` or the sensor's ``timeout``.

    When a user marks the deferred task failed, succeeded or clears it, :meth:`on_kill` cancels
    the call (with ``cancel_on_kill``, the default).
    """

    def __init__(
        self,
        call_id: str,
        hopper_conn_id: str = HopperHook.default_conn_name,
        poll_seconds: float = 55.0,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.call_id = call_id
        self.hopper_conn_id = hopper_conn_id
        self.poll_seconds = poll_seconds
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "call_id": self.call_id,
                "hopper_conn_id": self.hopper_conn_id,
                "poll_seconds": self.poll_seconds,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = HopperHook(self.hopper_conn_id)
        failures = 0
        while True:
            try:
                call = await hook.aget_call(self.call_id, wait=self.poll_seconds)
            except (CallNotFoundError, AuthError, InvalidInputError) as e:
                yield TriggerEvent({"status": "error", "call_id": self.call_id, "message": str(e)})
                return
            except Error as e:  # unreachable, or 5xx: the server may be restarting
                failures += 1
                self.log.warning("reading call %s failed (%s); trying again", self.call_id, e)
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            failures = 0
            state = call.get("state")
            if state in _ENDED:
                yield TriggerEvent({"status": "ended", "call_id": self.call_id, "state": state})
                return

    async def on_kill(self) -> None:
        """The user marked the deferred task failed or succeeded, or cleared it: cancel the call."""
        if self.cancel_on_kill:
            self.log.info("cancelling Hopper call %s", self.call_id)
            await HopperHook(self.hopper_conn_id).acancel(self.call_id)
