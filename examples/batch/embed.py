"""A batch app on the Python SDK: a model loaded once per worker process, dynamic batching,
autoscaled workers.

    hopper serve &
    python -m hopper deploy examples/batch/embed.py
    python examples/batch/embed.py 1000          # maps 1,000 texts, prints the first embeddings
"""

from __future__ import annotations

import sys
import time

import hopper

app = hopper.App("batch")

DIMENSIONS = 4


def vector(text: object) -> list[float] | Exception:
    """A stand-in embedding model: one small vector per text."""
    if not isinstance(text, str):
        return TypeError(f"expected a string, got {type(text).__name__}")
    codes = [ord(c) for c in text] or [0]
    return [round(sum(codes[i::DIMENSIONS]) / (1000 * len(codes)), 6) for i in range(DIMENSIONS)]


@app.function(batch=hopper.Batch(max_size=64, wait="50ms"), concurrency=4, min_workers=0,
              max_workers=4, buffer_workers=1, scaledown_window="60s", timeout="30s", retries=2)
def embed(texts: list[str]) -> list[list[float] | Exception]:
    """Up to 64 texts at once; a text that is not a string fails alone (its error in its place)."""
    return [vector(t) for t in texts]


@app.cls(concurrency=4, min_workers=1, max_workers=2)
class Embedder:
    """The same with a model loaded once per worker process, before its first input."""

    @hopper.enter()
    def load(self) -> None:
        print("loading the model once", file=sys.stderr)  # the worker's start-up log
        time.sleep(0.2)  # pretend to load weights
        self.model = vector

    @hopper.method()
    def embed(self, text: str) -> list[float]:
        result = self.model(text)
        if isinstance(result, Exception):
            raise result
        return result


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    texts = (f"text {i}" for i in range(n))
    for i, out in enumerate(hopper.Function.from_name("batch.embed").map(texts)):
        if i < 3:
            print(i, out)
    print(f"{n} texts embedded")
