"""``python -m hopper bench``: throughput and latency of Python functions on this machine.

Starts a temporary ``hopper serve`` (the binary from ``$HOPPER_BIN`` or ``PATH``, data in a
temporary folder), deploys a no-op app, and measures:

- ``map-batched``: one map of N no-op inputs through a batched function (batches of up to 500,
  4 in flight);
- ``map-concurrent``: the same through an unbatched function with ``concurrency = 32``;
- ``remote-latency``: sequential ``.remote()`` round trips on a warm worker (p50, p99);
- ``hopper-latency``: ``hopper bench --scenario latency`` for reference (spawn → result through
  a Rust worker, no Python).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from .client import Client

APP = """\
import hopper

app = hopper.App("pybench")


@app.function(batch=hopper.Batch(max_size=500, wait="10ms"), concurrency=4)
def noop_batched(xs: list[int]) -> list[int]:
    return xs


@app.function(concurrency=32)
def noop(x: int) -> int:
    return x
"""


def _start(binary: str, data: str) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOPPER_TOKEN",)}
    env["RUST_LOG"] = "warn"
    proc = subprocess.Popen(
        [binary, "serve", "--data", data, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("hopper listening on "):
        proc.kill()
        raise RuntimeError(f"hopper serve did not start: {line!r}")
    return proc, line.removeprefix("hopper listening on ")


def _percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return 0.0
    k = min(len(sorted_ms) - 1, max(0, round(p / 100 * (len(sorted_ms) - 1))))
    return sorted_ms[k]


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark and prints a table (or JSON lines); returns the exit code."""
    from .cli import find_binary

    binary = find_binary()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hopper-bench-") as tmp:
        proc, url = _start(binary, os.path.join(tmp, "data"))
        try:
            app_file = os.path.join(tmp, "pybench.py")
            with open(app_file, "w", encoding="utf-8") as f:
                f.write(APP)
            client = Client(url)
            client.deploy(app_file)
            for name, scenario in (("noop_batched", "map-batched"), ("noop", "map-concurrent")):
                fn = client.function(f"pybench.{name}")
                assert list(fn.map(range(100))) == list(range(100))  # warm
                started = time.perf_counter()
                count = 0
                for _ in fn.map(range(args.inputs)):
                    count += 1
                seconds = time.perf_counter() - started
                rows.append(
                    {
                        "scenario": scenario,
                        "inputs": count,
                        "seconds": seconds,
                        "inputs_per_s": count / seconds,
                    }
                )
                print(f"{scenario}: {count / seconds:,.0f} inputs/s", file=sys.stderr)
            fn = client.function("pybench.noop")
            for i in range(20):
                fn.remote(i)
            times: list[float] = []
            started = time.perf_counter()
            for i in range(args.round_trips):
                t = time.perf_counter()
                fn.remote(i)
                times.append((time.perf_counter() - t) * 1000)
            seconds = time.perf_counter() - started
            times.sort()
            rows.append(
                {
                    "scenario": "remote-latency",
                    "inputs": len(times),
                    "seconds": seconds,
                    "inputs_per_s": len(times) / seconds,
                    "p50_ms": _percentile(times, 50),
                    "p99_ms": _percentile(times, 99),
                }
            )
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    if not args.no_reference:
        out = subprocess.run(
            [binary, "bench", "--scenario", "latency", "--json"], capture_output=True, text=True, timeout=600
        )
        refs: list[Any] = []
        for line in out.stdout.splitlines():
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            refs.extend(parsed if isinstance(parsed, list) else [parsed])
        for ref in refs:
            if isinstance(ref, dict) and ref.get("scenario") == "latency":
                rows.append(
                    {
                        "scenario": "hopper bench latency (Rust worker)",
                        "inputs": ref.get("inputs"),
                        "seconds": ref.get("seconds"),
                        "inputs_per_s": ref.get("inputs_per_s"),
                        "p50_ms": ref.get("p50_ms"),
                        "p99_ms": ref.get("p99_ms"),
                    }
                )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print("| scenario | inputs | seconds | inputs/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        p50 = f"{row['p50_ms']:.2f}" if row.get("p50_ms") is not None else ""
        p99 = f"{row['p99_ms']:.2f}" if row.get("p99_ms") is not None else ""
        print(
            f"| {row['scenario']} | {row['inputs']:,} | {row['seconds']:.2f} | "
            f"{row['inputs_per_s']:,.0f} | {p50} | {p99} |"
        )
    return 0
