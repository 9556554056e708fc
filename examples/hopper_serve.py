"""Serve a Python function to Hopper: the `serve` protocol, so you write only the function.

    # embed_server.py
    from hopper_serve import serve

    model = load_model()          # runs once per worker process

    def embed(texts):             # with batching: a list of inputs in, a list of outputs out
        return model.encode(texts)

    serve(embed, batched=True)

Hopper writes one JSON request a line on stdin -- {"id": ..., "input": ...}, or
{"batch": [{"id": ..., "input": ...}, ...]} for a batched function -- and reads one answer per
input on stdout: {"id": ..., "output": ...} or {"id": ..., "error": {"code", "message"}}.
An exception fails only its input (in a batch, return an Exception in an input's place to
fail just that one). Use `log(id, text)`, or print to stderr, for log lines.
"""

import json
import sys
import traceback

__all__ = ["serve", "log"]

_out = sys.stdout


def _send(message):
    _out.write(json.dumps(message) + "\n")


def log(input_id, text):
    """Adds a log line to one input."""
    _send({"id": input_id, "log": str(text)})
    _out.flush()


def _error(exc):
    return {"code": type(exc).__name__, "message": str(exc) or type(exc).__name__}


def serve(handler, batched=False):
    """Answers requests from stdin until it closes."""
    # Anything the handler prints goes to stderr (a log line), never into the protocol.
    sys.stdout = sys.stderr
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        items = request["batch"] if "batch" in request else [request]
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
        _out.flush()
