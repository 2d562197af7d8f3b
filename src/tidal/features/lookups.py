"""Point-in-time joins of the spec's lookups onto main rows, for training and batch scoring.

For every lookup, each main row gets the newest reading of its keys taken at or before the
row's event time, and at most ``max_age_hours`` old: a Polars as-of join (backward, by the
keys). A reading taken after the event is never used, so a model learns only from what
could have been known when the event happened. The online index
(:mod:`tidal.features.online`) answers requests from the same readings
(:func:`lookup_readings`) with the same rule, so training and serving agree.

Readings are the lookup table's rows at a recorded version; when a (keys, time) pair was
ingested more than once, the last ingested reading wins (a correction replaces the value).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import polars as pl
import pyarrow as pa

from tidal.errors import StateError
from tidal.infra.lake import Lake, lookup_table
from tidal.spec import Lookup, Spec

TIME = "__tidal_time"  # the as-of time, on both sides of the join
ROW = "__tidal_row"
UTC_US = pl.Datetime("us", "UTC")
_POLARS = {"numeric": pl.Float64, "categorical": pl.String, "boolean": pl.Boolean, "datetime": UTC_US}
ARROW_TYPES = {"numeric": pa.float64(), "categorical": pa.string(), "boolean": pa.bool_(),
               "datetime": pa.timestamp("us", tz="UTC")}


def max_age(lookup: Lookup) -> timedelta | None:
    return None if lookup.max_age_hours is None else timedelta(hours=lookup.max_age_hours)


def lookup_readings(lake: Lake, spec: Spec, name: str, version: int | None = None) -> pl.DataFrame:
    """Lookup ``name``'s readings at ``version`` (default the newest), ready to join.

    Columns: the keys as text, ``TIME`` (the reading's time, UTC) and the features, typed;
    one reading per (keys, time), the last ingested one; sorted by time.
    Raises :class:`StateError` when the lookup has no data or the version does not exist.
    """
    lookup = spec.lookups[name]
    table = lookup_table(name)
    newest = lake.version(table)
    if newest is None:
        raise StateError(f"lookup {name!r} has no data yet",
                         fix=f"ingest its rows: `tidal ingest --lookup {name} [FILE]`")
    if version is not None and not 0 <= version <= newest:
        raise StateError(f"version {version} of lookup {name!r} does not exist",
                         fix=f"choose a version from 0 to {newest}")
    df = pl.from_arrow(lake.read(table, version=version))
    order = [c for c in ("_ingested_at", "_row") if c in df.columns]
    if order:
        df = df.sort(order, maintain_order=True)
    columns = [pl.col(k).cast(pl.String) for k in lookup.keys] + [pl.col(lookup.time).cast(UTC_US).alias(TIME)]
    for feat, f in lookup.features.items():  # a feature added to the spec after these rows is missing: null
        columns.append((pl.col(feat) if feat in df.columns else pl.lit(None)).cast(_POLARS[f.type]).alias(feat))
    return (df.select(columns)
            .drop_nulls([*lookup.keys, TIME])
            .unique([*lookup.keys, TIME], keep="last", maintain_order=True)
            .sort(TIME, maintain_order=True))


def join_lookups(table: pa.Table, spec: Spec, lake: Lake,
                 versions: Mapping[str, int | None] | None = None) -> pa.Table:
    """``table`` with every lookup's features appended, joined point-in-time on the keys and the event time.

    ``versions`` names each lookup table's version (a run's ``data_versions["lookups"]``);
    a lookup it does not name is read at its newest version. Rows without a reading of
    their keys at or before their event time (within ``max_age_hours``) get nulls.
    """
    if not spec.lookups:
        return table
    versions = versions or {}
    needed = [*spec.lookup_keys, spec.event_time]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise StateError(f"the rows lack the column(s) the lookups join on: {', '.join(missing)}",
                         fix="keep the lookup keys and the event time in the data")
    left = pl.from_arrow(table.select(needed)).select(
        [pl.int_range(pl.len(), dtype=pl.UInt32).alias(ROW)] + [pl.col(k).cast(pl.String) for k in spec.lookup_keys]
        + [pl.col(spec.event_time).cast(UTC_US).alias(TIME)]).sort(TIME, maintain_order=True)
    out = table
    for name, lookup in spec.lookups.items():
        readings = lookup_readings(lake, spec, name, versions.get(name))
        joined = (left.select(ROW, *lookup.keys, TIME)
                  .join_asof(readings, on=TIME, by=lookup.keys, strategy="backward", tolerance=max_age(lookup),
                             check_sortedness=False)
                  .sort(ROW))
        for feat, f in lookup.features.items():
            column = joined[feat].to_arrow().cast(ARROW_TYPES[f.type])
            if feat in out.column_names:  # the lookup is the authority on its features
                out = out.set_column(out.column_names.index(feat), feat, column)
            else:
                out = out.append_column(feat, column)
    return out

