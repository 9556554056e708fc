"""A stand-in embedding model: loads once, embeds a batch of texts at a time."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hopper_serve import serve  # noqa: E402

print("loading the model once", file=sys.stderr)
time.sleep(0.2)  # pretend to load weights
DIMENSIONS = 4


def embed(texts):
    out = []
    for text in texts:
        if not isinstance(text, str):
            out.append(TypeError(f"expected a string, got {type(text).__name__}"))
            continue
        codes = [ord(c) for c in text] or [0]
        out.append([round(sum(codes[i::DIMENSIONS]) / (1000 * len(codes)), 6) for i in range(DIMENSIONS)])
    return out


serve(embed, batched=True)
