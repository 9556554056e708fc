"""Spawns one transcription and polls for it, as a script or a web app would: the call id can
be kept (in a database, a URL) and looked up later from anywhere.

    python examples/speech/poll_speech.py FILE.wav    # HOPPER_SERVER names the server
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hopper


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: poll_speech.py FILE.wav")
    transcribe = hopper.Function.from_name("speech.Transcriber.transcribe")
    call = transcribe.spawn(Path(sys.argv[1]).read_bytes())
    print(f"spawned {call.object_id}")
    while True:
        try:
            result = hopper.FunctionCall.from_id(call.object_id).get(timeout=0)
        except hopper.exception.CallTimeoutError:
            time.sleep(0.5)
            continue
        print(result["text"])
        return


if __name__ == "__main__":
    main()
