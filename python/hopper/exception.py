"""Every error the SDK raises, under one base class, :class:`Error`.

=============================  ==============================================================
class                          raised when
=============================  ==============================================================
:class:`Error`                 base class: ``except hopper.exception.Error`` catches them all
:class:`InputFailedError`      an input failed on the worker (its ``code``, ``message``,
                               ``call_id`` and ``index``); a remote built-in exception is
                               re-raised as a subclass of both this and the built-in type, so
                               ``except ValueError`` works too
:class:`FunctionTimeoutError`  an attempt ran past the function's ``timeout`` (an input failed
                               with code ``timeout``)
:class:`StartupError`          the function's process could not start (an import or an
                               ``@enter`` failed: code ``startup_failed``)
:class:`InputCancelledError`   the call was cancelled
:class:`CallTimeoutError`      ``FunctionCall.get(timeout=...)`` saw no result in time (the call
                               goes on); also a built-in :class:`TimeoutError`
:class:`NotFoundError`         the function (``FunctionNotFoundError``, with the deployed
                               names) or the call (``CallNotFoundError``) does not exist
:class:`ConnectionError`       the server could not be reached (with its URL and a hint); also
                               a built-in :class:`ConnectionError`
:class:`AuthError`             the server wants a token, or the token lacks a scope
:class:`InvalidInputError`     the server refused a request as invalid (400, 409, 413), or an
                               argument cannot be encoded as JSON (:class:`EncodeError`)
:class:`ServerError`           the server failed (5xx) or answered something unexpected
:class:`DeployError`           ``hopper deploy`` refused an app (each problem names the function
                               and ``file:line``)
=============================  ==============================================================
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "AuthError",
    "CallNotFoundError",
    "CallTimeoutError",
    "ConnectionError",
    "DeployError",
    "EncodeError",
    "Error",
    "FunctionNotFoundError",
    "FunctionTimeoutError",
    "InputCancelledError",
    "InputFailedError",
    "InvalidInputError",
    "NotFoundError",
    "ServerError",
    "StartupError",
]


class Error(Exception):
    """Base class of every error the Hopper SDK raises."""


class InputFailedError(Error):
    """An input failed on the worker after its retries (or without retrying).

    Attributes:
        code: the error's code: the remote exception's type name (``"ValueError"``) or one of
            Hopper's codes (``"timeout"``, ``"exit_code"``, ``"lease_lost"``, ...).
        message: the remote error's message.
        call_id: the call (``"hc-..."``).
        index: the input's index within the call (0 for a spawn).
        module: where the remote exception's type is defined (``None`` for a built-in one,
            or when the worker did not say).
        remote_traceback: the remote traceback, the user's frames (``None`` when the worker
            sent none).
    """

    module: str | None = None
    remote_traceback: str | None = None

    def __init__(self, code: str, message: str, call_id: str | None = None, index: int = 0):
        self.code = code
        self.message = message
        self.call_id = call_id
        self.index = index
        super().__init__(self._text())

    def _text(self) -> str:
        where = f" (call {self.call_id}, input {self.index})" if self.call_id else ""
        # A class named for the remote type says it already (`ValueError: bad`, not
        # `ValueError: ValueError: bad`); the generic one names it in the message.
        named = type(self).__name__ == self.code
        return f"{self.message}{where}" if named else f"{self.code}: {self.message}{where}"

    def __reduce__(self) -> tuple[Any, ...]:
        rebuilt = (self.code, self.message, self.call_id, self.index, self.module, self.remote_traceback)
        return (_rebuild_input_error, rebuilt)


class FunctionTimeoutError(InputFailedError):
    """An attempt ran longer than the function's ``timeout`` and was killed."""


class StartupError(InputFailedError):
    """The function's process failed to start: its import or an ``@enter`` method raised.

    The message carries the last lines of the process's stderr (its traceback).
    """


class InputCancelledError(Error):
    """The call (or this input) was cancelled before it ended.

    Raised by ``FunctionCall.get()`` for a cancelled call, and inside a plain (not ``async``)
    function served by the runner when its input is cancelled, at its next Python line.
    """

    def __init__(self, message: str = "the input was cancelled", call_id: str | None = None, index: int = 0):
        self.call_id = call_id
        self.index = index
        self.message = message
        super().__init__(message)


class CallTimeoutError(Error, builtins.TimeoutError):
    """``FunctionCall.get(timeout=...)`` returned before the call ended; the call goes on.

    Attributes:
        call_id: the call, to poll again later.
    """

    def __init__(self, message: str, call_id: str | None = None):
        self.call_id = call_id
        super().__init__(message)


class NotFoundError(Error):
    """Something the request named does not exist on the server."""


class FunctionNotFoundError(NotFoundError):
    """No function of that name is deployed.

    Attributes:
        name: the name asked for.
        available: the functions that are deployed (``app.function``), when the server told.
    """

    def __init__(self, name: str, message: str, available: list[str] | None = None):
        self.name = name
        self.available = available or []
        text = message
        if self.available:
            if "deployed:" not in message:  # the server names them itself
                text += f" (deployed: {', '.join(self.available)})"
        else:
            text += " (no functions are deployed: run `python -m hopper deploy FILE.py`)"
        super().__init__(text)


class CallNotFoundError(NotFoundError):
    """No call has that id (it may have been pruned after the server's retention period)."""


class ConnectionError(Error, builtins.ConnectionError):
    """The server could not be reached.

    Attributes:
        url: the server's URL.
    """

    def __init__(self, url: str, detail: str, hint: str | None = None):
        self.url = url
        hint = hint or "Set HOPPER_SERVER (or hopper.Client(server=...)) to its address."
        super().__init__(
            f"cannot reach the Hopper server at {url}: {detail}. Is `hopper serve` running there? {hint}"
        )


class AuthError(Error):
    """The server refused the token: missing or unknown (401), or without the scope (403)."""

    def __init__(self, message: str, status: int):
        self.status = status
        super().__init__(message)


class InvalidInputError(Error):
    """The server refused a request as invalid; the message is the server's.

    Attributes:
        code: the server's error code (``"invalid_json"``, ``"payload_too_large"``, ...).
        status: the HTTP status.
    """

    def __init__(self, message: str, code: str = "invalid_input", status: int = 400):
        self.code = code
        self.status = status
        super().__init__(message)


class EncodeError(InvalidInputError, TypeError):
    """A value cannot be encoded as JSON (an unsupported type, NaN or infinity)."""

    def __init__(self, message: str):
        super().__init__(message, code="encode_error", status=0)


class ServerError(Error):
    """The server failed (5xx) or answered something this SDK does not understand."""

    def __init__(self, message: str, status: int = 0, code: str = "internal"):
        self.status = status
        self.code = code
        super().__init__(message)


class DeployError(Error):
    """An app was refused at deploy: each problem names the function and ``file:line``.

    Attributes:
        problems: one line per problem.
    """

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


_REMOTE_TYPES: dict[str, type[InputFailedError]] = {}


def _rebuild_input_error(
    code: str,
    message: str,
    call_id: str | None,
    index: int,
    module: str | None = None,
    traceback: str | None = None,
) -> InputFailedError:
    """Unpickles an :class:`InputFailedError` (one pickled before ``module`` and ``traceback``
    were kept has four arguments)."""
    return input_failed(code, message, call_id, index, module=module, traceback=traceback)


def input_failed(
    code: str,
    message: str,
    call_id: str | None = None,
    index: int = 0,
    *,
    module: str | None = None,
    traceback: str | None = None,
) -> InputFailedError:
    """The exception for a remote error, as Python would have raised it here where it can.

    Its class is a subclass of :class:`InputFailedError` and of the remote type: a built-in
    one when ``code`` names it (``ValueError``), or the app's own (``BadImage``) when
    ``module`` (where the remote type is defined) is already imported in this process and
    defines it, so ``except BadImage:`` works; else :class:`InputFailedError` itself, whose
    message starts with the remote type. The remote ``traceback`` (the user's frames) is kept
    as ``remote_traceback`` and, on Python 3.11 and later, added as a note that Python's own
    traceback print shows. Modules are never imported for this: a name from the server runs
    no code here.
    """
    if code == "timeout":
        exc: InputFailedError = FunctionTimeoutError(code, message, call_id, index)
    elif code == "startup_failed":
        exc = StartupError(code, message, call_id, index)
    else:
        # A type of the app's own (named by its module) is never taken for a built-in of the
        # same name.
        app_type = module is not None and module != "builtins"
        cls = (_app_type(code, module) or InputFailedError) if app_type else _remote_type(code)
        try:
            exc = cls(code, message, call_id, index)
        except Exception:  # the app's type wants other arguments
            exc = InputFailedError(code, message, call_id, index)
    exc.module = module
    exc.remote_traceback = traceback
    if traceback and hasattr(exc, "add_note"):
        exc.add_note("Remote traceback (on the worker):\n" + traceback.rstrip())
    return exc


_APP_TYPES: dict[tuple[str, str, int], type[InputFailedError]] = {}


def _app_type(code: str, module: str | None) -> type[InputFailedError] | None:
    """``InputFailedError`` and the exception type ``code`` of ``module``, if that module is
    imported here and defines such a type."""
    import sys

    if not module or module == "builtins":
        return None
    found = getattr(sys.modules.get(module), code, None)
    if not (isinstance(found, type) and issubclass(found, Exception)) or issubclass(found, Error):
        return None
    key = (module, code, id(found))
    known = _APP_TYPES.get(key)
    if known is not None:
        return known

    def __init__(
        self: InputFailedError, code: str, message: str, call_id: str | None = None, index: int = 0
    ) -> None:
        # The app type's own __init__ is not run: it may want other arguments than a message.
        self.code, self.message, self.call_id, self.index = code, message, call_id, index
        BaseException.__init__(self, self._text())

    try:
        # The message is Hopper's (the type's own __str__ may read attributes it lacks).
        made = type(
            code,
            (InputFailedError, found),
            {
                "__module__": module,
                "__init__": __init__,
                "__str__": BaseException.__str__,
                "__repr__": BaseException.__repr__,
            },
        )
    except TypeError:  # a type with its own instance layout
        return None
    _APP_TYPES[key] = made
    return made


def _remote_type(code: str) -> type[InputFailedError]:
    known = _REMOTE_TYPES.get(code)
    if known is not None:
        return known
    cls: type[InputFailedError] = InputFailedError
    builtin = getattr(builtins, code, None)
    if (
        isinstance(builtin, type)
        and issubclass(builtin, Exception)
        and not issubclass(builtin, (Error, builtins.TimeoutError))
    ):
        try:
            cls = type(code, (InputFailedError, builtin), {"__module__": "hopper.exception"})
        except TypeError:  # a built-in with its own instance layout (OSError, ...)
            cls = InputFailedError
    _REMOTE_TYPES[code] = cls
    return cls
