"""The warehouse's nightly build as an Airflow DAG: load the raw files, then `dbt build`, each a
Hopper call (deferred while it runs) through the `hopper_default` connection. Airflow only
triggers them: dbt and DuckDB run in the Hopper app's own environment.

Copy it to your DAGs folder; set the raw folder in the DAG's params (or trigger with
``{"raw_folder": "/tmp/shop-raw"}``).
"""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, Param
from hopper.airflow.operators import HopperOperator

with DAG(
    "warehouse",
    schedule="0 4 * * *",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    params={"raw_folder": Param("/tmp/shop-raw", type="string")},
    render_template_as_native_obj=True,
) as dag:
    load = HopperOperator(
        task_id="load", function="warehouse.load", op_kwargs={"raw_folder": "{{ params.raw_folder }}"}
    )
    build = HopperOperator(task_id="build", function="warehouse.build", input=None)
    load >> build
