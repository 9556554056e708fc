"""Writes the warehouse example's raw files: FOLDER/orders.csv (with cancelled and duplicated
orders, as raw data has) and FOLDER/customers.parquet.

    python examples/warehouse/make_raw.py FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

COUNTRIES = [" de", "FR", "de ", "it"]


def write(folder: Path, orders: int = 200) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    customers = pa.table(
        {
            "customer_id": list(range(1, 9)),
            "name": [f"customer {i}" for i in range(1, 9)],
            "country": [COUNTRIES[i % 4] for i in range(1, 9)],
        }
    )
    pq.write_table(customers, folder / "customers.parquet")
    lines = ["order_id,customer_id,ordered_at,amount,status"]
    for i in range(orders):
        status = "cancelled" if i % 10 == 0 else "paid"
        lines.append(f"{i},{1 + i % 8},2026-11-{1 + i % 3:02}T10:00:00,{10 + i % 7}.50,{status}")
    lines.append(lines[5])  # a duplicate, as exports have
    (folder / "orders.csv").write_text("\n".join(lines) + "\n")
    return folder


if __name__ == "__main__":
    print(f"raw files in {write(Path(sys.argv[1]))}")
