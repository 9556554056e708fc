"""Maps `taxi.summarise` over every Parquet file under s3://BUCKET/PREFIX and prints the
combined totals (as JSON) and the files that failed.

    python examples/parquet/run_summary.py BUCKET [PREFIX]       # PREFIX default: trips/
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import hopper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from taxi import combine, filesystem


def main() -> None:
    bucket = sys.argv[1]
    prefix = sys.argv[2] if len(sys.argv) > 2 else "trips/"
    from pyarrow import fs

    infos = filesystem().get_file_info(fs.FileSelector(f"{bucket}/{prefix}", recursive=True))
    paths = sorted(i.path for i in infos if i.path.endswith(".parquet"))
    summarise = hopper.Function.from_name("taxi.summarise")
    started = time.monotonic()
    parts = list(summarise.map(paths, return_exceptions=True))
    total = combine(parts)
    failed = [(p, str(e)) for p, e in zip(paths, parts, strict=True) if isinstance(e, Exception)]
    print(json.dumps(total, indent=2, sort_keys=True))
    print(f"{len(paths)} files in {time.monotonic() - started:.1f} s; {len(failed)} failed", file=sys.stderr)
    for path, error in failed:
        print(f"  {path}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
