"""A small warehouse built with DuckDB and dbt: `warehouse.load` copies the raw files into schema
``raw``, `warehouse.build` runs `dbt build` on the dbt project in ``shop/`` (staging and mart
models, and their tests). The Airflow DAG in dags/warehouse_dag.py runs them in order; dbt and
DuckDB live in the environment a worker builds from this app's requirements, not in Airflow's.

    export WAREHOUSE_DB=/tmp/shop.duckdb                  # read at deploy, stored in the manifest
    python examples/warehouse/make_raw.py /tmp/shop-raw
    python -m hopper deploy examples/warehouse/warehouse.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import hopper

#: dbt and DuckDB pinned together: the file `load` writes is the file dbt reads.
app = hopper.App(
    "warehouse",
    requirements=["dbt-core==1.11.16", "dbt-duckdb==1.11.1", "duckdb==2.0.1"],
)

HERE = Path(__file__).resolve().parent
ENV = {
    "WAREHOUSE_DB": os.environ.get("WAREHOUSE_DB") or str(HERE / "shop.duckdb"),
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
}
#: The dbt project, shipped in the code snapshot with this file.
PROJECT = HERE / "shop"


class DbtBuildFailed(Exception):
    """`dbt build` did not pass: a model did not build or a data test found bad rows. The
    message names each node that failed and what dbt said of it."""


@app.function(env=ENV, timeout="10m")
def load(raw_folder: str) -> dict[str, int]:
    """Copies ``orders.csv`` and ``customers.parquet`` from ``raw_folder`` into schema ``raw``
    (replacing what was there), as they are. Returns the row count of each table."""
    import duckdb

    folder = Path(raw_folder)
    for name in ("orders.csv", "customers.parquet"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name}: the raw folder must hold orders.csv and customers.parquet"
            )
    with duckdb.connect(os.environ["WAREHOUSE_DB"]) as db:
        db.execute("CREATE SCHEMA IF NOT EXISTS raw")
        db.execute(
            "CREATE OR REPLACE TABLE raw.orders AS SELECT * FROM read_csv_auto(?)",
            [str(folder / "orders.csv")],
        )
        db.execute(
            "CREATE OR REPLACE TABLE raw.customers AS SELECT * FROM read_parquet(?)",
            [str(folder / "customers.parquet")],
        )
        counts = {}
        for table in ("orders", "customers"):
            row = db.execute(f"SELECT count(*) FROM raw.{table}").fetchone()
            counts[table] = row[0] if row else 0
        return counts


@app.function(env=ENV, timeout="10m")
def build() -> dict[str, Any]:
    """Runs ``dbt build`` on ``shop/``: the staging models, then the mart
    ``mart.revenue_by_country_day``, each followed by its data tests. dbt's output is the
    call's log.

    Returns ``{"models": [names built], "tests_passed": n}``. Raises :class:`DbtBuildFailed`
    naming every model or test that failed (a failed test leaves the models after it unbuilt).
    """
    # dbt writes its compiled SQL and logs beside the project unless told otherwise; the
    # snapshot is shared by every call, so each build gets folders of its own. dbt runs in a
    # process of its own: it keeps DuckDB's file open (and locked) for the life of the process
    # that ran it, and the file must be free for its readers once the build ends.
    with tempfile.TemporaryDirectory(prefix="dbt-") as scratch:
        dbt = Path(sys.executable).with_name("dbt")  # the environment built from requirements
        command = [str(dbt), "build", "--no-use-colors", "--project-dir", str(PROJECT)]
        command += ["--profiles-dir", str(PROJECT), "--target-path", f"{scratch}/target"]
        command += ["--log-path", f"{scratch}/logs"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        print(done.stdout + done.stderr, end="")
        run_results = Path(scratch, "target", "run_results.json")
        if not run_results.is_file():
            raise DbtBuildFailed(
                f"dbt build could not run (exit code {done.returncode}): see the call's logs"
            )
        results = json.loads(run_results.read_text())["results"]
    # unique_id: "model.shop.stg_orders", "test.shop.unique_stg_orders_order_id.<hash>"
    nodes = [(r["unique_id"].split(".")[0], r["unique_id"].split(".")[2], r) for r in results]
    failed = [f"{kind} {name}: {r['message']}" for kind, name, r in nodes if r["status"] in ("error", "fail")]
    if failed or done.returncode != 0:
        raise DbtBuildFailed("dbt build failed: " + "; ".join(failed or ["see the call's logs"]))
    return {
        "models": [name for kind, name, _ in nodes if kind == "model"],
        "tests_passed": sum(1 for kind, _, r in nodes if kind == "test" and r["status"] == "pass"),
    }
