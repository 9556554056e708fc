"""Writes raw readings for the refresh example: FOLDER/DAY.csv with ``station,time,celsius``
rows, hourly, for three stations.

    python examples/refresh/make_weather.py FOLDER [DAYS]
"""

from __future__ import annotations

import datetime
import math
import sys
from pathlib import Path

STATIONS = {"berlin": 9.0, "hamburg": 8.0, "munich": 7.0}


def write(folder: Path, days: int, start: datetime.date = datetime.date(2026, 11, 1)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in range(days):
        day = start + datetime.timedelta(days=d)
        path = folder / f"{day}.csv"
        lines = ["station,time,celsius"]
        for station, base in STATIONS.items():
            for hour in range(24):
                celsius = base + 5 * math.sin((hour - 9) / 24 * 2 * math.pi) - d * 0.5
                lines.append(f"{station},{day}T{hour:02}:00:00,{celsius:.1f}")
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    written = write(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    print(f"wrote {len(written)} files to {sys.argv[1]}")
