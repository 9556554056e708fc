"""A dataset refreshed on a schedule and published: every night at 02:30 Berlin time `refresh`
derives daily figures from the raw readings in ``$WEATHER_DATA/incoming/*.csv`` into a staging
SQLite file, then `publish` copies it, in one transaction, into the file Datasette serves.
A failed refresh notifies ``$WEATHER_WEBHOOK`` (when set at deploy).

    export WEATHER_DATA=/tmp/weather                    # read at deploy, stored in the manifest
    python examples/refresh/make_weather.py $WEATHER_DATA/incoming
    python -m hopper deploy examples/refresh/refresh.py
    datasette serve $WEATHER_DATA/published/weather.db  # http://127.0.0.1:8001/weather/daily
    hopper schedules trigger weather.refresh            # or wait for 02:30
"""

from __future__ import annotations

import csv
import os
import sqlite3
from pathlib import Path

import hopper

app = hopper.App("weather")

DATA = os.environ.get("WEATHER_DATA") or str(Path(__file__).resolve().parent / "data")
ENV = {"WEATHER_DATA": DATA}

if os.environ.get("WEATHER_WEBHOOK"):
    app.notify(
        on=["failed", "recovered"], functions=["refresh"], webhook=os.environ["WEATHER_WEBHOOK"], quiet="1s"
    )


@app.function(schedule=hopper.Cron("30 2 * * *", timezone="Europe/Berlin"), env=ENV, timeout="10m", retries=0)
def refresh() -> dict:
    """Derives ``daily(station, day, readings, min_c, max_c, mean_c)`` from every CSV in
    ``incoming/`` (columns ``station,time,celsius``), then publishes it.

    Raises:
        ValueError: a row that is not ``station,ISO time,number`` (names the file and line);
            nothing is published then.
    """
    root = Path(os.environ["WEATHER_DATA"])
    staging = root / "staging.db"
    tmp = staging.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    db = sqlite3.connect(tmp)
    db.execute("CREATE TABLE readings (station TEXT, day TEXT, celsius REAL)")
    files = sorted((root / "incoming").glob("*.csv"))
    for path in files:
        with path.open(newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    db.execute(
                        "INSERT INTO readings VALUES (?, ?, ?)",
                        (row["station"], row["time"][:10], float(row["celsius"])),
                    )
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{path.name}:{line}: not station,time,celsius: {row} ({e})") from None
    db.execute(
        """CREATE TABLE daily AS
           SELECT station, day, count(*) AS readings, min(celsius) AS min_c, max(celsius) AS max_c,
                  round(avg(celsius), 2) AS mean_c
           FROM readings GROUP BY station, day ORDER BY station, day"""
    )
    db.execute("DROP TABLE readings")
    db.commit()
    rows = db.execute("SELECT count(*) FROM daily").fetchone()[0]
    db.close()
    os.replace(tmp, staging)
    print(f"derived {rows} daily rows from {len(files)} files")
    published = publish.remote()
    return {"files": len(files), "rows": rows, "published": published}


@app.function(env=ENV, timeout="5m")
def publish() -> str:
    """Copies ``staging.db`` into ``published/weather.db`` with SQLite's backup API: readers
    (Datasette) see the old data or the new, never a half-written file. Returns its path."""
    root = Path(os.environ["WEATHER_DATA"])
    target = root / "published" / "weather.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(root / "staging.db"), sqlite3.connect(target)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    print(f"published {target}")
    return str(target)
