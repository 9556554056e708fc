"""The `serve` protocol in plain Python, with no dependencies: an example for other languages.

Python users want the SDK instead (`pip install ./python`, `import hopper`), which adds
per-input logs, classes with `@hopper.enter`, async functions, retries and deploys.

    # embed_server.py
    from hopper_serve import serve

    model = load_model()          # runs once per worker process

    def embed(texts):             # with batching: a list of inputs in, a list of outputs out
        return model.encode(texts)

    serve(embed, batched=True)

Hopper writes one JSON request a line on stdin -- {"id": ..., "input": ...}, or
{"batch": [{"id": ..., "input": ...}, ...]} for a batched function -- and reads one answer per
input on stdout: {"id": ..., "output": ...} or {"id": ..., "error": {"code", "message"}}.
Up to $HOPPER_CONCURRENCY requests run at once, on threads. An exception, or an output that
is not JSON (a NaN, an object), fails only its input (in a batch, return an Exception in an
input's place to fail just that one). Print to stderr for log lines. See
docs/SERVE_PROTOCOL.md.
"""

import json
import os
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

__all__ = ["serve"]

_out = sys.stdout
_lock = threading.Lock()


def _send(message):
    try:
        line = json.dumps(message, allow_nan=False)
    except (TypeError, ValueError) as exc:  # the output is not JSON: fail this input alone
        line = json.dumps({"id": message["id"], "error": _error(exc, "bad_output")})
    with _lock:
        _out.write(line + "\n")
        _out.flush()


def _error(exc, code=None):
    return {"code": code or type(exc).__name__, "message": str(exc) or type(exc).__name__}


def _answer(handler, batched, items):
    if batched:
        try:
            results = list(handler([item["input"] for item in items]))
            if len(results) != len(items):
                raise ValueError(f"the handler returned {len(results)} results for {len(items)} inputs")
        except Exception as exc:  # the whole batch failed
            traceback.print_exc()
            results = [exc] * len(items)
    else:
        results = []
        for item in items:
            try:
                results.append(handler(item["input"]))
            except Exception as exc:
                traceback.print_exc()
                results.append(exc)
    for item, result in zip(items, results):
        if isinstance(result, Exception):
            _send({"id": item["id"], "error": _error(result)})
        else:
            _send({"id": item["id"], "output": result})


def serve(handler, batched=False):
    """Answers requests from stdin until it closes, up to $HOPPER_CONCURRENCY at once."""
    # Anything the handler prints goes to stderr (a log line), never into the protocol.
    sys.stdout = sys.stderr
    _send({"ready": True})
    workers = max(1, int(os.environ.get("HOPPER_CONCURRENCY", "1")))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            request = json.loads(line)
            if "cancel" in request:  # {"cancel": id}: this example lets a cancelled input finish
                continue
            items = request["batch"] if "batch" in request else [request]
            pool.submit(_answer, handler, batched, items)
