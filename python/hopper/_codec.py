"""Python values to JSON and back: the one encoding the client and the serve runner share.

- ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``list``, ``tuple`` (as a list) and
  ``dict`` with string keys are JSON as they are; ``int``, ``float``, ``bool`` and ``None`` keys
  become strings, as in ``json.dumps``.
- ``bytes`` (and ``bytearray``, ``memoryview``) travel as ``{"$bytes": "<base64>"}`` and come
  back as ``bytes``; a dict of exactly that one key is reserved for it. Over
  :data:`INLINE_MAX` bytes they travel as they are, stored apart as a blob, and the value holds
  ``{"$blob": "sha256:…", "size": N}`` (a dict with a ``"$blob"`` key is reserved for that); a
  whole value whose JSON is over :data:`INLINE_MAX` travels as a blob too (``"type": "json"``).
  Whoever encodes gives the function that stores a blob (``put``); whoever decodes, the one
  that fetches it (``fetch``).
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
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .exception import EncodeError

BYTES_KEY = "$bytes"
BLOB_KEY = "$blob"
ARGS_KEY = "$args"
KWARGS_KEY = "$kwargs"


def _inline_max() -> int:
    text = os.environ.get("HOPPER_INLINE_MAX", "").strip()
    if not text:
        return 256 * 1024
    try:
        return max(0, int(text))
    except ValueError:
        warnings.warn(
            f"HOPPER_INLINE_MAX={text!r} is not a number of bytes; using 262144 (256 KiB)",
            stacklevel=2,
        )
        return 256 * 1024


INLINE_MAX = _inline_max()
"""Bytes above which a byte string, or a whole value's JSON, travels as a blob (256 KiB;
``HOPPER_INLINE_MAX`` in the environment, in bytes, changes it)."""

Put = Callable[[bytes], dict[str, Any]]
"""Stores bytes as a blob and returns its reference, ``{"$blob": "sha256:…", "size": N}``."""

Fetch = Callable[[str], bytes]
"""The bytes of the blob a digest names, checked against it."""


def _numpy_value(value: Any) -> tuple[bool, Any]:
    np = sys.modules.get("numpy")
    if np is None:
        return False, None
    if isinstance(value, np.ndarray):
        return True, value.tolist()
    if isinstance(value, np.generic):
        return True, value.item()
    return False, None


class _PutFailed(Exception):
    """Carries an error of ``put`` out of ``json.dumps`` untouched."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def dumps(value: Any, what: str = "the value", put: Put | None = None) -> str:
    """JSON text of ``value``; raises :class:`EncodeError` naming the faulty part. With
    ``put``, byte strings and a whole text over :data:`INLINE_MAX` bytes are stored as blobs
    (``put``'s errors propagate as they are)."""

    def default(item: Any) -> Any:
        if isinstance(item, (bytes, bytearray, memoryview)):
            data = bytes(item)
            # Compared as base64 would be inline (4 bytes for every 3).
            if put is not None and (len(data) + 2) // 3 * 4 > INLINE_MAX:
                try:
                    return put(data)
                except Exception as e:
                    raise _PutFailed(e) from None
            return {BYTES_KEY: base64.b64encode(data).decode("ascii")}
        converted, out = _numpy_value(item)
        if converted:
            return out
        raise TypeError(type(item).__name__)

    try:
        # Unescaped: UTF-8 on the wire (an emoji is 4 bytes, not 12), and a string UTF-8
        # cannot carry (a lone surrogate) is refused here, with its place, not by the server.
        text = json.dumps(value, default=default, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        data = text.encode("utf-8")
    except _PutFailed as e:
        raise e.error from None
    except (TypeError, ValueError, RecursionError) as e:  # UnicodeEncodeError is a ValueError
        raise EncodeError(_explain(value, what) or f"{what} cannot be encoded as JSON: {e}") from None
    if put is not None and len(data) > INLINE_MAX:
        reference = dict(put(data))
        reference["type"] = "json"
        return json.dumps(reference, separators=(",", ":"))
    return text


def file_reference(data: bytes, folder: str, kind: str = "bytes") -> dict[str, Any]:
    """Writes ``data`` to a file in ``folder`` and returns the output reference a worker stores
    as a blob: ``{"$blob": None, "path": FILE, "type": kind}`` (the serve protocol)."""
    # A name of its own: the folder is shared by every input of the process.
    path = os.path.join(folder, f"output-{uuid.uuid4().hex}")
    with open(path, "wb") as f:
        f.write(data)
    return {BLOB_KEY: None, "path": path, "type": kind}


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


def _blob(obj: dict[str, Any], fetch: Fetch | None) -> Any:
    """The value a blob reference stands for: its bytes (from ``fetch``, or, where there is
    none, from its local ``path``, on a worker), or the JSON value they hold for ``"type":
    "json"``; the reference itself where neither can give them."""
    path, digest = obj.get("path"), obj.get(BLOB_KEY)
    if fetch is not None and isinstance(digest, str):
        data = fetch(digest)
    elif fetch is None and isinstance(path, str):
        # Only where nothing fetches (a worker's runner, given the file its worker fetched):
        # a client never reads a local file a payload names.
        with open(path, "rb") as f:
            data = f.read()
    else:
        return obj
    if obj.get("type") == "json":
        try:
            return loads(data, fetch)
        except ValueError as e:
            raise ValueError(
                f'blob {digest} is said to hold JSON ("type": "json") but does not: {e}'
            ) from None
    return data


def _is_blob(obj: dict[str, Any]) -> bool:
    return BLOB_KEY in obj and isinstance(obj.get("size", 0), int)


def loads(text: str | bytes, fetch: Fetch | None = None) -> Any:
    """A value from JSON text, with ``{"$bytes": ...}`` decoded to ``bytes`` and blob
    references to what they stand for (see :func:`_blob`)."""

    def hook(obj: dict[str, Any]) -> Any:
        if len(obj) == 1 and BYTES_KEY in obj and isinstance(obj[BYTES_KEY], str):
            return base64.b64decode(obj[BYTES_KEY], validate=True)
        if _is_blob(obj):
            return _blob(obj, fetch)
        return obj

    return json.loads(text, object_hook=hook)


def decode(value: Any, fetch: Fetch | None = None) -> Any:
    """A value parsed by a plain JSON parser (httpx), with ``{"$bytes": ...}`` and blob
    references decoded as :func:`loads` does."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(BYTES_KEY), str):
            return base64.b64decode(value[BYTES_KEY], validate=True)
        if _is_blob(value):
            return _blob(value, fetch)
        return {k: decode(v, fetch) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, fetch) for v in value]
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
