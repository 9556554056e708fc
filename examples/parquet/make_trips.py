"""Writes N taxi-like Parquet files (``trips/2026-11-DD-NN.parquet``: pickup time, distance,
fare, payment) into a bucket, generated from a fixed seed.

    python examples/parquet/make_trips.py BUCKET [N]      # TAXI_S3_ENDPOINT as for taxi.py
"""

from __future__ import annotations

import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq

PAYMENTS = ["card", "cash", "app"]


def table(seed: int, rows: int) -> pa.Table:
    rng = random.Random(seed)
    distance = [round(rng.uniform(0.5, 25.0), 3) for _ in range(rows)]
    return pa.table(
        {
            "pickup_minute": [rng.randrange(24 * 60) for _ in range(rows)],
            "distance_km": distance,
            "fare": [round(3.5 + 2.1 * d + rng.uniform(0, 4), 2) for d in distance],
            "payment": [rng.choice(PAYMENTS) for _ in range(rows)],
        }
    )


def write(bucket: str, n: int = 50, rows: int = 2000) -> dict[str, pa.Table]:
    """Writes the files and returns them by path (``BUCKET/KEY``)."""
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from taxi import filesystem

    fs = filesystem(allow_bucket_creation=True)
    fs.create_dir(bucket)
    written = {}
    for i in range(n):
        path = f"{bucket}/trips/2026-11-{1 + i % 28:02}-{i:02}.parquet"
        t = table(i, rows + i * 7)
        pq.write_table(t, path, filesystem=fs)
        written[path] = t
    return written


if __name__ == "__main__":
    files = write(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50)
    print(f"wrote {len(files)} files to s3://{sys.argv[1]}/trips/")
