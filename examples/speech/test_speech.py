"""The speech example end to end: audio the test makes with Debian's espeak-ng (some of it
resampled with sox), transcribed by PocketSphinx's packaged English model through a batched
map over a folder (results streamed into a JSON-lines file) and a spawn-then-poll script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# Sentences and words of each that the model hears in espeak-ng's voice.
CLIPS = {
    "a-mother": ("call my mother tomorrow morning", {"tomorrow", "morning"}),
    "b-coffee": ("i would like a cup of coffee", {"would", "like"}),
    "c-report": ("please send the report to the office", {"please", "report", "office"}),
}
VOICE = ["-v", "en-us+m3", "-s", "120"]


def speak(text: str, path: Path) -> None:
    subprocess.run(["espeak-ng", *VOICE, "-w", str(path), text], check=True, capture_output=True)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install espeak-ng sox)")
    folder = tmp_path_factory.mktemp("speech")
    for name, (text, _) in CLIPS.items():
        speak(text, folder / f"{name}.wav")
    # One clip at the model's own rate, resampled by sox; the others at espeak-ng's 22,050 Hz.
    # sox in its repeatable mode (-R): its dither is otherwise random noise, and a clip's
    # transcript would change from one run to the next.
    raw = folder / "c-report.wav"
    subprocess.run(
        ["sox", "-R", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(folder / "c16.wav")],
        check=True,
    )
    (folder / "c16.wav").replace(raw)
    # A long clip (over 256 KiB: it travels as a blob): the first sentence four times over.
    speak(". ".join([CLIPS["a-mother"][0]] * 4), folder / "d-long.wav")
    # A file that is not audio: said in its own line, without failing its batch.
    (folder / "e-broken.wav").write_bytes(b"not a wav file")
    return folder


def test_a_folder_is_transcribed_in_batches_into_a_jsonl_file(
    server: object, deploy_example: Callable[..., None], audio: Path, tmp_path: Path
) -> None:
    assert (audio / "d-long.wav").stat().st_size > 256 * 1024
    deploy_example(HERE / "transcribe.py")
    out = tmp_path / "transcripts.jsonl"
    r = subprocess.run(
        [sys.executable, str(HERE / "run_speech.py"), str(audio), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "5 files" in r.stdout and "batch sizes" in r.stdout, r.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    names = ["a-mother.wav", "b-coffee.wav", "c-report.wav", "d-long.wav", "e-broken.wav"]
    assert [row["file"] for row in rows] == names
    broken = rows.pop()
    assert "not a WAV file" in broken["error"], broken
    # A small model on a synthetic voice: each clip's transcript holds some of its words
    # (which ones may shift with what was batched before it), most of them in all.
    matched = 0
    for row in rows:
        name = row["file"].removesuffix(".wav")
        expected = CLIPS.get(name, CLIPS["a-mother"])[1]
        heard = set(row["text"].split()) & expected
        assert heard, (row, expected)
        matched += len(heard)
    assert matched >= 6, rows
    assert rows[3]["seconds"] > 4 * rows[0]["seconds"] * 0.8
    # One model load per worker process, and the clips travelled in batches.
    loads = {(row["pid"], row["loaded_at"]) for row in rows if "pid" in row}
    assert len(loads) <= 2, loads
    assert max(row["batch"] for row in rows) > 1, rows


def test_a_spawned_transcription_is_polled_for(
    server: object, deploy_example: Callable[..., None], audio: Path
) -> None:
    deploy_example(HERE / "transcribe.py")
    r = subprocess.run(
        [sys.executable, str(HERE / "poll_speech.py"), str(audio / "b-coffee.wav")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    spawned, text = r.stdout.strip().split("\n")
    assert spawned.startswith("spawned hc-"), r.stdout
    assert {"would", "like"} <= set(text.split()), r.stdout
