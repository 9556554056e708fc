"""The Parquet example against a local S3-compatible server (moto in server mode): 50 generated
files are summarised by a map and combined; the totals equal a direct computation, and a
missing key fails only its own input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hopper
import pytest

from conftest import free_port, http_process

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server on a free loopback port; its endpoint."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with http_process(cmd, endpoint, "moto", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        yield endpoint


def test_a_map_over_the_bucket_adds_up_and_a_missing_key_fails_alone(
    s3: str, server: Any, deploy_example: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = {
        "TAXI_S3_ENDPOINT": s3,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    sys.path.insert(0, str(HERE))
    import make_trips
    from taxi import combine

    written = make_trips.write("taxi-trips", 50)
    deploy_example(HERE / "taxi.py", **creds)
    spec = server.get("/v1/functions/taxi.summarise")["spec"]
    assert spec["env"] == {"TAXI_S3_ENDPOINT": s3, "AWS_DEFAULT_REGION": "us-east-1"}  # no secrets

    paths = sorted(written)
    missing = "taxi-trips/trips/2026-12-01-99.parquet"
    summarise = hopper.Function.from_name("taxi.summarise")
    parts = list(summarise.map([*paths[:25], missing, *paths[25:]], return_exceptions=True))
    assert isinstance(parts[25], hopper.exception.InputFailedError)
    assert parts[25].code == "FileNotFoundError" and "2026-12-01-99" in str(parts[25])
    assert sum(isinstance(p, Exception) for p in parts) == 1
    total = combine(parts)

    trips = sum(t.num_rows for t in written.values())
    distance = sum(sum(t["distance_km"].to_pylist()) for t in written.values())
    fares = sum(sum(t["fare"].to_pylist()) for t in written.values())
    payments: dict[str, int] = {}
    for t in written.values():
        for kind in t["payment"].to_pylist():
            payments[kind] = payments.get(kind, 0) + 1
    assert total["files"] == 50
    assert total["trips"] == trips
    assert total["distance_km"] == pytest.approx(distance, abs=0.01)
    assert total["fares"] == pytest.approx(fares, abs=0.05)
    assert total["by_payment"] == payments

    r = subprocess.run(
        [sys.executable, str(HERE / "run_summary.py"), "taxi-trips"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **creds},
    )
    assert r.returncode == 0, r.stderr
    assert f'"trips": {trips}' in r.stdout and "50 files in" in r.stderr and "0 failed" in r.stderr
