"""Policy objects for ``@app.function(...)``: :class:`Retries`, :class:`Batch`, :class:`Limits`,
:class:`Cron`, :class:`Period`, and :class:`NoRetry`."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass

from ._durations import Duration, format_ms, to_ms

__all__ = ["Batch", "Cron", "Limits", "NoRetry", "Period", "Retries", "Secret"]

_SECRET_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Secret:
    """A named secret kept by the server: each of its keys becomes an environment variable of
    the functions that name it (``@app.function(secrets=[hopper.Secret.from_name("stripe")])``).

    Set its values with ``hopper secrets set stripe API_KEY=…`` (or ``--from-dotenv .env``);
    they never pass through your code, the manifest or the API, and reach a worker only inside
    the leases it holds. Unlike Modal there is no ``Secret.from_dict``: a value written in the
    app file would travel in the manifest, which any ``read`` token can see.
    """

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SECRET_NAME.fullmatch(self.name):
            raise ValueError(
                f"a secret's name is 1 to 64 lowercase letters, digits, '_' and '-', "
                f"starting with a letter, not {self.name!r}"
            )

    @staticmethod
    def from_name(name: str) -> Secret:
        """The secret called ``name`` on the server (checked when the app is deployed).

        Raises:
            ValueError: ``name`` is not a valid secret name.
        """
        return Secret(name)


@dataclass(frozen=True)
class Retries:
    """Retries with exponential backoff.

    Attempt ``n + 1`` starts no earlier than
    ``min(initial_delay * backoff_coefficient ** (n - 1), max_delay)`` after attempt ``n`` failed.

    Args:
        max_retries: retries after the first attempt, 0 to 1000.
        backoff_coefficient: growth of the delay per retry, 1.0 (fixed delay) to 100.0.
        initial_delay: delay before the first retry (seconds, ``"1s"``-style text or a timedelta).
        max_delay: the delay never grows past this.
    """

    max_retries: int
    backoff_coefficient: float = 2.0
    initial_delay: Duration = 1.0
    max_delay: Duration = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 1000:
            raise ValueError(f"max_retries must be an int from 0 to 1000, not {self.max_retries!r}")
        if not 1.0 <= float(self.backoff_coefficient) <= 100.0:
            raise ValueError(
                f"backoff_coefficient must be from 1.0 to 100.0, not {self.backoff_coefficient!r}"
            )
        to_ms(self.initial_delay, "initial_delay")
        to_ms(self.max_delay, "max_delay")

    def toml(self) -> str:
        """The manifest's inline table for this policy."""
        return (
            f"{{ max_retries = {self.max_retries}, "
            f"backoff_coefficient = {float(self.backoff_coefficient)!r}, "
            f'initial_delay = "{format_ms(to_ms(self.initial_delay, "initial_delay"))}", '
            f'max_delay = "{format_ms(to_ms(self.max_delay, "max_delay"))}" }}'
        )


def _check_rate(name: str, text: object) -> None:
    """Raises ``ValueError`` unless ``text`` is a rate the server takes: ``COUNT/PERIOD``, a
    count from 1 to 1,000,000 and a period (a unit or a duration) from 1 s to 1 day."""
    if isinstance(text, str) and "/" in text:
        count, period = (part.strip() for part in text.split("/", 1))
        unit = period if period[:1].isdigit() else f"1{period}"
        try:
            ms = to_ms(unit, name)
        except ValueError:
            ms = -1
        if count.isdigit() and 1 <= int(count) <= 1_000_000 and 1_000 <= ms <= 86_400_000:
            return
    raise ValueError(
        f"Limits.{name} must be a count (1 to 1000000) per period (s, m, h, d, or 1s to 1d), "
        f'such as "50/s", "3000/m" or "10/5m", not {text!r}'
    )


@dataclass(frozen=True)
class Limits:
    """Limits on a function's inputs, kept by the server across every worker and server
    (``[functions.f.limits]`` in a manifest). Every field is optional.

    Args:
        key: where each call's key comes from: the name of an argument the callers pass by
            keyword (``"tenant"`` for ``f.spawn(tenant="acme", ...)``), or a JSON pointer
            into the call's JSON input (``"/$args/0"`` for the first of several positional
            arguments, ``"/tenant"`` for a function given one dict). A call without that
            value has no key; a call's own ``with_options(key=...)`` comes first. Inputs of
            one key are a group, and groups take turns.
        max_running: inputs of the function running at once, 1 to 1,000,000.
        max_running_per_key: inputs of one key running at once.
        rate: attempts started per period, in any window of it: ``"50/s"``, ``"3000/m"``,
            ``"10/5m"`` (period 1 s to 1 day).
        rate_per_key: the same, per key.

    Inputs held back by a limit stay ``pending`` and never hold back other keys.
    """

    key: str | None = None
    max_running: int | None = None
    max_running_per_key: int | None = None
    rate: str | None = None
    rate_per_key: str | None = None

    def __post_init__(self) -> None:
        if self.key is not None and (
            not isinstance(self.key, str)
            or not (self.key.startswith("/") or self.key.isidentifier())
            or re.search(r"~(?![01])", self.key)
        ):
            raise ValueError(
                f'Limits.key must be an argument name such as "tenant" or a JSON pointer such as "/tenant", '
                f"not {self.key!r}"
            )
        for name in ("max_running", "max_running_per_key"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000
            ):
                raise ValueError(f"Limits.{name} must be an int from 1 to 1000000, not {value!r}")
        for name in ("rate", "rate_per_key"):
            value = getattr(self, name)
            if value is not None:
                _check_rate(name, value)

    def toml(self) -> str:
        """The manifest's inline table for these limits."""
        fields = []
        if self.key is not None:
            pointer = self.key if self.key.startswith("/") else f"/$kwargs/{self.key}"
            fields.append(f"key = {json.dumps(pointer)}")
        for name in ("max_running", "max_running_per_key", "rate", "rate_per_key"):
            value = getattr(self, name)
            if isinstance(value, str):
                fields.append(f"{name} = {json.dumps(value)}")
            elif value is not None:
                fields.append(f"{name} = {value}")
        return "{ " + ", ".join(fields) + " }"


@dataclass(frozen=True)
class Batch:
    """Dynamic batching: the function receives a list of inputs and returns a list of outputs
    of the same length, in the same order. Callers still pass one input per call.

    A batch closes when it holds ``max_size`` inputs or ``wait`` has passed since its first
    input, whichever comes first.

    Args:
        max_size: most inputs in one batch, 1 to 10,000.
        wait: longest wait for a batch to fill (seconds, ``"50ms"``-style text or a timedelta).
    """

    max_size: int
    wait: Duration = "0ms"

    def __post_init__(self) -> None:
        if not isinstance(self.max_size, int) or not 1 <= self.max_size <= 10_000:
            raise ValueError(f"Batch.max_size must be an int from 1 to 10000, not {self.max_size!r}")
        to_ms(self.wait, "Batch.wait")

    def toml(self) -> str:
        """The manifest's inline table for this policy."""
        return f'{{ max_size = {self.max_size}, wait = "{format_ms(to_ms(self.wait, "wait"))}" }}'


@dataclass(frozen=True)
class Cron:
    """A cron schedule: 5 fields (or 6, seconds first), or ``@hourly``, ``@daily``,
    ``@weekly``, ``@monthly``, in an IANA time zone (default ``"UTC"``).

    Times are wall-clock times in the zone; the server checks the expression at deploy.
    """

    cron_string: str
    timezone: str = "UTC"


class Period:
    """A fixed period between calls, at least one second.

    ``Period("15m")``, ``Period(900)`` (seconds), ``Period(minutes=15)`` or
    ``Period(hours=1, minutes=30)`` (Modal's spelling).
    """

    def __init__(
        self,
        every: Duration | None = None,
        *,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
    ) -> None:
        parts = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if every is not None and parts:
            raise ValueError("Period: give either a duration or days=/hours=/minutes=/seconds=")
        ms = to_ms(every if every is not None else parts, "Period")
        if ms < 1000:
            raise ValueError(f"Period: the period must be at least 1s, not {format_ms(ms)}")
        self.ms = ms

    def __repr__(self) -> str:
        return f"Period({format_ms(self.ms)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Period) and other.ms == self.ms

    def __hash__(self) -> int:
        return hash(self.ms)


class NoRetry(Exception):
    """Raise to fail an input at once, without using its retries (a corrupt upload cannot get
    better by trying again).

    ``raise hopper.NoRetry(ValueError("corrupt file"))`` reports the wrapped exception's type
    and message; ``raise hopper.NoRetry("corrupt file")`` reports ``NoRetry``.
    """

    def __init__(self, error: BaseException | str) -> None:
        self.error = error
        super().__init__(str(error))
