"""Hopper's Python SDK: write functions in Python, deploy them, and call them from any Python
program.

    import hopper

    app = hopper.App("shop")

    @app.function(timeout="60s", retries=3, concurrency=8)
    def resize(url: str) -> dict:
        return {"url": url, "ok": True}

Deploy with ``python -m hopper deploy shop.py``; call with
``hopper.Function.from_name("shop.resize").remote(url)``. See docs/PYTHON.md.
"""

from . import exception
from .app import App, ClsDef, FunctionDef, batched, enter, exit, method
from .client import Client, Function, FunctionCall
from .options import Batch, Cron, Limits, NoRetry, Period, Retries, Secret

__version__ = "0.1.0"

__all__ = [
    "App",
    "Batch",
    "Client",
    "ClsDef",
    "Cron",
    "Function",
    "FunctionCall",
    "FunctionDef",
    "Limits",
    "NoRetry",
    "Period",
    "Retries",
    "Secret",
    "__version__",
    "batched",
    "enter",
    "exception",
    "exit",
    "method",
]
