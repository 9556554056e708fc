"""A small warehouse with DuckDB: raw files → staging → mart, each step a Hopper function, run in
order by the Airflow DAG in dags/warehouse_dag.py (or by hand: `hopper run warehouse.load ...`).

    export WAREHOUSE_DB=/tmp/shop.duckdb                  # read at deploy, stored in the manifest
    python examples/warehouse/make_raw.py /tmp/shop-raw
    python -m hopper deploy examples/warehouse/warehouse.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hopper

app = hopper.App("warehouse")

ENV = {"WAREHOUSE_DB": os.environ.get("WAREHOUSE_DB") or str(Path(__file__).resolve().parent / "shop.duckdb")}


def _connect() -> Any:
    import duckdb

    return duckdb.connect(os.environ["WAREHOUSE_DB"])


@app.function(env=ENV, timeout="10m")
def load(raw_folder: str) -> dict:
    """Loads ``orders.csv`` and ``customers.parquet`` from ``raw_folder`` into schema ``raw``
    (replacing what was there). Returns the row counts."""
    folder = Path(raw_folder)
    for name in ("orders.csv", "customers.parquet"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name}: the raw folder must hold orders.csv and customers.parquet"
            )
    with _connect() as db:
        db.execute("CREATE SCHEMA IF NOT EXISTS raw")
        db.execute(
            "CREATE OR REPLACE TABLE raw.orders AS SELECT * FROM read_csv_auto(?)",
            [str(folder / "orders.csv")],
        )
        db.execute(
            "CREATE OR REPLACE TABLE raw.customers AS SELECT * FROM read_parquet(?)",
            [str(folder / "customers.parquet")],
        )
        return {t: db.execute(f"SELECT count(*) FROM raw.{t}").fetchone()[0] for t in ("orders", "customers")}


@app.function(env=ENV, timeout="10m")
def stage() -> dict:
    """Cleans the raw tables into schema ``staging``: typed columns, cancelled and duplicate
    orders dropped, countries upper-cased."""
    with _connect() as db:
        db.execute("CREATE SCHEMA IF NOT EXISTS staging")
        db.execute("""
            CREATE OR REPLACE TABLE staging.orders AS
            SELECT DISTINCT order_id::BIGINT AS order_id, customer_id::BIGINT AS customer_id,
                   CAST(ordered_at AS DATE) AS day, amount::DECIMAL(12, 2) AS amount
            FROM raw.orders WHERE status <> 'cancelled'""")
        db.execute("""
            CREATE OR REPLACE TABLE staging.customers AS
            SELECT customer_id::BIGINT AS customer_id, name, upper(trim(country)) AS country
            FROM raw.customers""")
        return {"orders": db.execute("SELECT count(*) FROM staging.orders").fetchone()[0]}


@app.function(env=ENV, timeout="10m")
def mart() -> list:
    """Builds ``mart.revenue_by_country_day`` (country, day, orders, revenue) and returns it."""
    with _connect() as db:
        db.execute("CREATE SCHEMA IF NOT EXISTS mart")
        db.execute("""
            CREATE OR REPLACE TABLE mart.revenue_by_country_day AS
            SELECT c.country, o.day, count(*) AS orders, sum(o.amount) AS revenue
            FROM staging.orders o JOIN staging.customers c USING (customer_id)
            GROUP BY ALL ORDER BY c.country, o.day""")
        rows = db.execute(
            "SELECT country, day::VARCHAR, orders, revenue::DOUBLE FROM mart.revenue_by_country_day"
        )
        return [list(r) for r in rows.fetchall()]
