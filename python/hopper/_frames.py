"""Tracebacks as a user reads them: the frames of their own code, not this SDK's."""

from __future__ import annotations

import os
import traceback

#: This SDK's folder: its frames are left out of the tracebacks users see.
SDK_FOLDER = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _sdk_frame(frame: traceback.FrameSummary) -> bool:
    return frame.filename.startswith(SDK_FOLDER) or frame.filename.startswith("<frozen ")


def user_traceback(exc: BaseException, relative_to: str | None = None) -> str:
    """``exc``'s traceback as Python prints it, with the frames of this SDK (the runner that
    called the function, the deploy that imported the file) and of the import machinery left
    out; whole when every frame is theirs (a fault of the SDK itself).

    Files under the folder ``relative_to`` (a worker's copy of the code snapshot) are named
    by their path in it, as in the user's project (``app.py``, not the worker's cache path).
    """
    root = os.path.join(os.path.abspath(relative_to), "") if relative_to else None
    shown = traceback.TracebackException.from_exception(exc)
    pending = [shown]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        own = [f for f in current.stack if not _sdk_frame(f)]
        for frame in own:
            if root and frame.filename.startswith(root):
                frame.filename = frame.filename[len(root) :]
        if own:
            current.stack = traceback.StackSummary.from_list(own)
        pending.extend(t for t in (current.__cause__, current.__context__) if t is not None)
    # A huge message (the exception's last line) is cut, so the frames keep their room.
    return "".join(_cut(line) for line in shown.format())


#: Longest line of a traceback kept (a message can be megabytes).
MAX_LINE = 2_000


def _cut(text: str) -> str:
    """``text`` (lines of a traceback) with each line over :data:`MAX_LINE` characters cut."""
    lines = text.split("\n")
    return "\n".join(line if len(line) <= MAX_LINE else line[:MAX_LINE] + " …[cut]" for line in lines)
