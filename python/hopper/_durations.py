"""Durations as Hopper's manifests write them (``"500ms"``, ``"60s"``, ``"1m30s"``, ``"2h"``,
``"7d"``), from strings, seconds or :class:`datetime.timedelta`."""

from __future__ import annotations

import datetime
import re

Duration = str | int | float | datetime.timedelta
"""A duration: ``"60s"``-style text, a number of seconds, or a ``timedelta``."""

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d)")


def to_ms(value: Duration, what: str) -> int:
    """Milliseconds in ``value``; raises ``ValueError`` naming ``what`` when it is not a
    duration."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration, not {value!r}")
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos = 0
        total = 0
        while pos < len(text):
            m = _PART.match(text, pos)
            if m is None:
                raise ValueError(
                    f'{what}: invalid duration {value!r} (expected e.g. "500ms", "60s", '
                    '"1m30s", "2h", "7d", or a number of seconds)'
                )
            total += int(m.group(1)) * _UNITS_MS[m.group(2)]
            pos = m.end()
        if not text:
            raise ValueError(f"{what}: the duration is empty")
        return total
    else:
        raise ValueError(f"{what}: expected a duration, not {type(value).__name__}")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"{what}: a duration must be a finite number of seconds >= 0")
    return round(seconds * 1000)


def format_ms(ms: int) -> str:
    """``ms`` in the largest exact units: ``90000`` → ``"1m30s"``."""
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    if ms:
        out.append(f"{ms}ms")
    return "".join(out)
