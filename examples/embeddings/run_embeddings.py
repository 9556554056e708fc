"""Embeds N generated sentences through the deployed `embeddings` app and prints throughput,
the batch sizes the workers formed, and how many worker processes loaded the model.

    python examples/embeddings/run_embeddings.py [N]        # default 2,000; HOPPER_SERVER names the server
"""

from __future__ import annotations

import collections
import sys
import time

import hopper

SUBJECTS = ["The cat", "A dog", "The stock market", "My laptop", "The river", "Our team", "The recipe"]
VERBS = ["sleeps on", "runs past", "drops below", "overheats near", "floods", "ships", "needs"]
OBJECTS = ["the sofa", "the park", "expectations", "the window", "the valley", "the release", "more salt"]


def sentences(n: int) -> list[str]:
    """``n`` sentences built from a small grammar (no data set is downloaded)."""
    out = []
    for i in range(n):
        a, b, c = i % 7, (i // 7) % 7, (i // 49) % 7
        out.append(f"{SUBJECTS[a]} {VERBS[b]} {OBJECTS[c]} ({i}).")
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    embed = hopper.Function.from_name("embeddings.Embedder.embed")
    started = time.monotonic()
    batches: collections.Counter[int] = collections.Counter()
    workers: set[tuple[int, float]] = set()
    for out in embed.map(sentences(n)):
        batches[out["batch"]] += 1
        workers.add((out["pid"], out["loaded_at"]))
    took = time.monotonic() - started
    common = ", ".join(f"{size}x{count // size}" for size, count in batches.most_common(5))
    print(f"{n:,} sentences embedded in {took:.1f} s ({n / took:,.0f}/s)")
    print(f"batch sizes (sizexbatches, most common): {common}")
    print(f"model loads: {len(workers)} (one per worker process)")


if __name__ == "__main__":
    main()
