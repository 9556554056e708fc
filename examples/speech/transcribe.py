"""Batched speech-to-text: WAV bytes in, text out, with PocketSphinx's English model loaded
once per worker process.

The model ships inside the `pocketsphinx` wheel (5.x: the acoustic model, language model and
dictionary under `pocketsphinx/model/en-us/`); nothing is downloaded. Audio travels as bytes:
a clip over 256 KiB is stored as a blob and reaches the worker as a file, never as base64.

    python -m hopper deploy examples/speech/transcribe.py
    python examples/speech/run_speech.py FOLDER transcripts.jsonl    # a map over FOLDER/*.wav
    python examples/speech/poll_speech.py FILE.wav                    # spawn, then poll
"""

from __future__ import annotations

import io
import os
import time
import wave

import hopper
import numpy as np

app = hopper.App("speech")

RATE = 16_000
"""The sample rate the English model was trained on (Hz)."""


def pcm16k(wav: bytes) -> bytes:
    """16-bit mono PCM at 16 kHz from a WAV file of 16-bit PCM (any rate, mono or stereo).

    Raises:
        ValueError: the bytes are not a WAV file of 16-bit PCM.
    """
    try:
        with wave.open(io.BytesIO(wav)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(f"not a WAV file: {e}") from None
    if width != 2:
        raise ValueError(f"the WAV file holds {8 * width}-bit samples; 16-bit PCM is needed")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != RATE and len(samples) > 1:
        if rate > RATE:
            # A windowed-sinc low-pass below the new Nyquist rate first, so that what the
            # lower rate cannot hold does not fold back into the speech band.
            taps = np.arange(101) - 50
            kernel = np.sinc(2 * 0.45 * RATE / rate * taps) * np.hanning(101)
            samples = np.convolve(samples, kernel / kernel.sum(), mode="same")
        at = np.arange(0, len(samples) - 1, rate / RATE)
        samples = np.interp(at, np.arange(len(samples)), samples)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


@app.cls(concurrency=1, max_workers=2, timeout="300s")
class Transcriber:
    @hopper.enter()
    def load(self) -> None:
        from pocketsphinx import Decoder

        started = time.monotonic()
        self.decoder = Decoder(samprate=RATE, loglevel="FATAL")
        self.loaded_at = time.time()
        print(f"model loaded in {time.monotonic() - started:.2f} s (pid {os.getpid()})")

    @hopper.method()
    @hopper.batched(max_batch_size=8, wait_ms=200)
    def transcribe(self, clips: list[bytes]) -> list[dict]:
        """One WAV file's bytes in, ``{"text", "seconds" (of audio), "batch" (its size),
        "pid", "loaded_at"}`` out; the worker gathers up to 8 waiting clips into one batch. A
        clip that is not a WAV file of 16-bit PCM gets ``{"error": why, ...}`` instead of
        failing the clips batched with it."""
        out = []
        for wav in clips:
            try:
                pcm = pcm16k(wav)
            except ValueError as e:
                out.append({"error": str(e), "text": "", "seconds": 0.0, "batch": len(clips)})
                continue
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            out.append(
                {
                    "text": hyp.hypstr if hyp is not None else "",
                    "seconds": round(len(pcm) / 2 / RATE, 3),
                    "batch": len(clips),
                    "pid": os.getpid(),
                    "loaded_at": self.loaded_at,
                }
            )
        return out
