"""The warehouse example: its Airflow DAG (the provider's operators, deferred) runs load → dbt
build on a real server, dbt in the environment the worker builds from the app's requirements;
the mart's rows are checked against the raw files, and a bad raw row stops the build at dbt's
test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hopper
import httpx
import pytest

pytest.importorskip("airflow.sdk", reason="Airflow is not installed (pip install './python[airflow]')")
duckdb = pytest.importorskip("duckdb")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_raw  # noqa: E402

RUN = """
import datetime, runpy, sys
dag = runpy.run_path(sys.argv[1])["dag"]
dr = dag.test(run_conf={"raw_folder": sys.argv[2]})
print("DAGRUN", dr.state, {ti.task_id: str(ti.state) for ti in dr.get_task_instances()})
"""


def test_the_dag_builds_the_mart(
    server: Any, airflow_env: dict[str, str], deploy_example: Callable[..., None], tmp_path: Path
) -> None:
    raw = make_raw.write(tmp_path / "raw", orders=200)
    db = tmp_path / "shop.duckdb"
    deploy_example(HERE / "warehouse.py", WAREHOUSE_DB=str(db))
    dags = Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"])  # dag.test() runs what the folder holds
    dags.mkdir(exist_ok=True)
    shutil.copy(HERE / "dags/warehouse_dag.py", dags / "warehouse_dag.py")
    r = subprocess.run(
        [sys.executable, "-c", RUN, str(dags / "warehouse_dag.py"), str(raw)],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert "DAGRUN success" in r.stdout, out
    assert "deferred" in out.lower(), out
    # dbt ran in its own environment: Airflow's has no dbt.
    assert subprocess.run([sys.executable, "-c", "import dbt.cli"], capture_output=True).returncode != 0
    build = _last_call(server.url, "build").get(timeout=0)
    assert build == {"models": ["stg_customers", "stg_orders", "revenue_by_country_day"], "tests_passed": 13}

    # The expected mart, computed here from the raw rules: cancelled (every 10th) and the
    # duplicate dropped, countries trimmed and upper-cased.
    expected: dict[tuple[str, str], list[float]] = {}
    for i in range(200):
        if i % 10 == 0:
            continue
        country = make_raw.COUNTRIES[(1 + i % 8) % 4].strip().upper()
        key = (country, f"2026-11-{1 + i % 3:02}")
        expected.setdefault(key, [0, 0.0])
        expected[key][0] += 1
        expected[key][1] += 10 + i % 7 + 0.5
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT country, day::VARCHAR, orders, revenue::DOUBLE FROM mart.revenue_by_country_day"
        ).fetchall()
    got = {(c, d): [n, rev] for c, d, n, rev in rows}
    assert got.keys() == expected.keys()
    for key, (n, revenue) in expected.items():
        assert got[key][0] == n and got[key][1] == pytest.approx(revenue), (key, got[key])


def test_a_bad_raw_row_fails_the_build_at_dbts_test(
    server: Any, deploy_example: Callable[..., None], tmp_path: Path
) -> None:
    raw = make_raw.write(tmp_path / "raw", orders=20)
    db = tmp_path / "shop.duckdb"
    deploy_example(HERE / "warehouse.py", WAREHOUSE_DB=str(db))
    import pyarrow as pa
    import pyarrow.parquet as pq

    customers = pq.read_table(raw / "customers.parquet").to_pylist()
    customers.append({"customer_id": 9, "name": "customer 9", "country": "es"})  # not served
    pq.write_table(pa.Table.from_pylist(customers), raw / "customers.parquet")
    assert hopper.Function.from_name("warehouse.load").remote(str(raw)) == {"orders": 21, "customers": 9}
    with pytest.raises(hopper.exception.InputFailedError) as failed:
        hopper.Function.from_name("warehouse.build").remote()
    assert failed.value.code == "DbtBuildFailed", failed.value
    assert "test accepted_values_stg_customers_country" in failed.value.message, failed.value
    # The test stopped the build before the mart was built from the bad row.
    with duckdb.connect(str(db), read_only=True) as con:
        tables = {
            t
            for (t,) in con.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            ).fetchall()
        }
    assert "staging.stg_customers" in tables and "mart.revenue_by_country_day" not in tables, tables


def _last_call(server_url: str, function: str) -> Any:
    """The newest call of ``warehouse.<function>``."""
    listed = httpx.get(
        f"{server_url}/v1/calls", params={"app": "warehouse", "function": function, "limit": 1}
    )
    listed.raise_for_status()
    return hopper.FunctionCall.from_id(listed.json()["calls"][0]["id"])
