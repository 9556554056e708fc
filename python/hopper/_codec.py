"""Python values to JSON and back: the one encoding the client and the serve runner share.

- ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``list``, ``tuple`` (as a list) and
  ``dict`` with string keys are JSON as they are; ``int``, ``float``, ``bool`` and ``None`` keys
  become strings, as in ``json.dumps``.
- ``bytes`` (and ``bytearray``, ``memoryview``) travel as ``{"$bytes": "<base64>"}`` and come
  back as ``bytes``; a dict of exactly that one key is reserved for it.
- numpy scalars become Python numbers, numpy arrays nested lists (when numpy is installed).
- NaN, infinities and every other type are refused with :class:`hopper.exception.EncodeError`
  naming the type and where in the value it is.

Arguments of a call become one JSON input: no argument → ``null``, one → that value, several
→ ``{"$args": [...]}``, and keyword arguments → ``{"$args": [...], "$kwargs": {...}}``.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

from .exception import EncodeError

BYTES_KEY = "$bytes"
ARGS_KEY = "$args"
KWARGS_KEY = "$kwargs"


def _numpy_value(value: Any) -> tuple[bool, Any]:
    np = sys.modules.get("numpy")
    if np is None:
        return False, None
    if isinstance(value, np.ndarray):
        return True, value.tolist()
    if isinstance(value, np.generic):
        return True, value.item()
    return False, None


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    converted, out = _numpy_value(value)
    if converted:
        return out
    raise TypeError(type(value).__name__)


def dumps(value: Any, what: str = "the value") -> str:
    """JSON text of ``value``; raises :class:`EncodeError` naming the faulty part."""
    try:
        # Unescaped: UTF-8 on the wire (an emoji is 4 bytes, not 12), and a string UTF-8
        # cannot carry (a lone surrogate) is refused here, with its place, not by the server.
        text = json.dumps(value, default=_default, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        text.encode("utf-8")
        return text
    except (TypeError, ValueError, RecursionError) as e:  # UnicodeEncodeError is a ValueError
        raise EncodeError(_explain(value, what) or f"{what} cannot be encoded as JSON: {e}") from None


def to_json_value(value: Any, what: str = "the value") -> Any:
    """``value`` as plain JSON-compatible Python (for httpx's ``json=``), checked."""
    return json.loads(dumps(value, what))


def _explain(value: Any, path: str, depth: int = 0) -> str | None:
    """The first part of ``value`` that JSON cannot hold, said for a person."""
    if depth > 200:
        return f"{path} is nested too deeply (a value that contains itself?)"
    if isinstance(value, str):
        return _unencodable(value, path)
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return f"{path} is {value!r} (a float), which JSON cannot represent"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    converted, out = _numpy_value(value)
    if converted:
        inner = _explain(out, path, depth + 1)
        if inner is not None:
            return inner.replace(" (a float)", f" (in a {type(value).__module__}.{type(value).__name__})")
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _explain(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, Mapping):
        for k, item in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return f"{path} has a key of type {type(k).__name__}, which JSON cannot hold"
            if isinstance(k, str) and _unencodable(k, f"{path} key {k!r}"):
                return _unencodable(k, f"{path} key {k!r}")
            found = _explain(item, f"{path}[{k!r}]", depth + 1)
            if found:
                return found
        return None
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return (
        f"{path} is of type {name}, which cannot be encoded as JSON "
        "(use None, bool, int, float, str, bytes, list, dict or numpy values)"
    )


def _unencodable(text: str, path: str) -> str | None:
    """Why ``text`` cannot travel as UTF-8 (it holds a lone surrogate, as a file name decoded
    with ``surrogateescape`` does), or ``None``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"{path} holds the lone surrogate {text[e.start]!r} at character {e.start}, which "
            "UTF-8 cannot carry (send bytes, or a str without it)"
        )
    return None


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and BYTES_KEY in obj and isinstance(obj[BYTES_KEY], str):
        return base64.b64decode(obj[BYTES_KEY], validate=True)
    return obj


def loads(text: str | bytes) -> Any:
    """A value from JSON text, with ``{"$bytes": ...}`` decoded to ``bytes``."""
    return json.loads(text, object_hook=_object_hook)


def decode(value: Any) -> Any:
    """A value parsed by a plain JSON parser (httpx), with ``{"$bytes": ...}`` decoded."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(BYTES_KEY), str):
            return base64.b64decode(value[BYTES_KEY], validate=True)
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def encode_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The JSON input for a call with these arguments (not yet checked: see ``dumps``)."""
    if kwargs:
        return {ARGS_KEY: list(args), KWARGS_KEY: dict(kwargs)}
    if not args:
        return None
    if len(args) == 1:
        return args[0]
    return {ARGS_KEY: list(args)}
