"""Transcribes every .wav file of a folder through the deployed `speech` app, as one map,
writing each result to a JSON-lines file as it arrives (in the files' order), then prints
throughput and the batch sizes the workers formed.

    python examples/speech/run_speech.py FOLDER transcripts.jsonl   # HOPPER_SERVER names the server
"""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

import hopper


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: run_speech.py FOLDER OUT.jsonl")
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    files = sorted(folder.glob("*.wav"))
    if not files:
        sys.exit(f"{folder} holds no .wav files")
    transcribe = hopper.Function.from_name("speech.Transcriber.transcribe")
    started = time.monotonic()
    batches: collections.Counter[int] = collections.Counter()
    audio = 0.0
    # Files are read as the map sends them, so a large folder is never all in memory.
    clips = (f.read_bytes() for f in files)
    with out.open("w") as sink:
        for path, result in zip(files, transcribe.map(clips), strict=True):
            sink.write(json.dumps({"file": path.name, **result}) + "\n")
            sink.flush()
            batches[result["batch"]] += 1
            audio += result["seconds"]
    took = time.monotonic() - started
    common = ", ".join(f"{size}x{count // size}" for size, count in batches.most_common(5))
    print(f"{len(files)} files ({audio:.1f} s of audio) transcribed in {took:.1f} s -> {out}")
    print(f"batch sizes (sizexbatches, most common): {common}")


if __name__ == "__main__":
    main()
