"""Parallel processing of Parquet files in an object store: `summarise` aggregates one file
(trips, distance, fares, trips by payment type) read with pyarrow's S3FileSystem; `run_summary.py` maps
it over every key of a bucket and combines the parts.

    export TAXI_S3_ENDPOINT=http://127.0.0.1:5000        # omit for AWS itself
    python -m hopper deploy examples/parquet/taxi.py
    python examples/parquet/run_summary.py taxi-trips            # BUCKET [PREFIX]
"""

from __future__ import annotations

import os
from typing import Any

import hopper

app = hopper.App("taxi")

# Where the store is, read here at deploy and stored in the manifest. Never credentials: a
# function's spec (its env too) is readable by every token with `read`. Workers take
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from their own environment (the environment of
# `hopper serve` or `hopper worker`) or an instance role.
ENV = {name: os.environ[name] for name in ("TAXI_S3_ENDPOINT", "AWS_DEFAULT_REGION") if os.environ.get(name)}


def filesystem(**options: Any) -> Any:
    """The bucket's filesystem: ``$TAXI_S3_ENDPOINT`` (an S3-compatible server) or AWS;
    ``options`` go to pyarrow's ``S3FileSystem``."""
    from pyarrow import fs

    endpoint = os.environ.get("TAXI_S3_ENDPOINT", "")
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    if not endpoint:
        return fs.S3FileSystem(region=region, **options)
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        options.setdefault("anonymous", True)  # a local store (moto, MinIO) open to all
    scheme, _, host = endpoint.partition("://")
    return fs.S3FileSystem(endpoint_override=host, scheme=scheme, region=region, **options)


@app.function(concurrency=8, max_workers=2, timeout="5m", no_retry_on=FileNotFoundError, env=ENV)
def summarise(path: str) -> dict:
    """The totals of one file, ``BUCKET/KEY``: ``{"path", "trips", "distance_km",
    "fares", "by_payment": {type: trips}}``.

    Raises:
        FileNotFoundError: no such object (not retried).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, filesystem=filesystem(), columns=["distance_km", "fare", "payment"])
    counts = pc.value_counts(table["payment"]).to_pylist()
    return {
        "path": path,
        "trips": table.num_rows,
        "distance_km": round(pc.sum(table["distance_km"]).as_py() or 0.0, 3),
        "fares": round(pc.sum(table["fare"]).as_py() or 0.0, 2),
        "by_payment": {c["values"]: c["counts"] for c in counts},
    }


def combine(parts: list[dict]) -> dict:
    """Adds up the parts :func:`summarise` returned (exceptions among them are skipped)."""
    total: dict = {"files": 0, "trips": 0, "distance_km": 0.0, "fares": 0.0, "by_payment": {}}
    for part in parts:
        if not isinstance(part, dict):
            continue
        total["files"] += 1
        total["trips"] += part["trips"]
        total["distance_km"] = round(total["distance_km"] + part["distance_km"], 3)
        total["fares"] = round(total["fares"] + part["fares"], 2)
        for kind, n in part["by_payment"].items():
            total["by_payment"][kind] = total["by_payment"].get(kind, 0) + n
    return total
