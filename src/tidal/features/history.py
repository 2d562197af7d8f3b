"""History features, offline: aggregates of each entity's earlier events over time windows.

The rule is Feast's point-in-time join. For every event of an entity, at time p, the
*feature row as of p* holds each aggregate over the entity's events in (p - window, p]:
every event at p is in it, ties included (:func:`feature_rows`). A row at time t takes the
entity's newest feature row with p < t, strictly (:func:`join_history`: an as-of join,
backward, exact matches excluded), so it never sees itself, nor anything at or after its
own time. An entity with no earlier event gets count 0 and a missing sum, mean, min and max.

Training joins the events at the run's recorded version onto their own feature rows;
batch scoring joins its rows onto the lake's events; the online store holds each entity's
newest feature row (:func:`latest_rows`, see :mod:`tidal.features.online_history`), which
is what the offline join gives a row later than every event. One function computes the
feature rows for all three, so they agree to the bit.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import polars as pl
import pyarrow as pa

from tidal.errors import StateError
from tidal.features.lookups import TIME, UTC_US, join_lookups
from tidal.infra.lake import Lake
from tidal.spec import HistoryFeature, Spec

ENTITY = "__tidal_entity"
ROW = "__tidal_row"
BATCH = "_batch_id"


def history_columns(spec: Spec) -> list[str]:
    """The event columns the history features aggregate (each once, in spec order)."""
    return list(dict.fromkeys(h.column for h in spec.history.values() if h.column is not None))


def missing_values(spec: Spec) -> dict[str, float | None]:
    """What an entity without an earlier event gets: count 0, every other aggregate missing."""
    return {name: 0.0 if h.agg == "count" else None for name, h in spec.history.items()}


def history_events(events: pa.Table | pl.DataFrame, spec: Spec, *, keep: tuple[str, ...] = ()) -> pl.DataFrame:
    """The events as the history needs them: ``ENTITY`` (text), ``TIME`` (UTC) and the aggregated
    columns as floats (a column the events lack is missing), sorted by entity and time.
    ``keep`` names further columns to carry (e.g. the batch id)."""
    df = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
    columns = [pl.col(spec.entity_key).cast(pl.String).alias(ENTITY), pl.col(spec.event_time).cast(UTC_US).alias(TIME)]
    for col in history_columns(spec):
        columns.append((pl.col(col) if col in df.columns else pl.lit(None)).cast(pl.Float64).fill_nan(None).alias(col))
    columns += [pl.col(c) for c in keep if c in df.columns]
    return df.select(columns).drop_nulls([ENTITY, TIME]).sort([ENTITY, TIME], maintain_order=True)


def read_events(lake: Lake, spec: Spec, version: int | None = None, *, keep: tuple[str, ...] = ()) -> pl.DataFrame:
    """The lake's events at ``version`` (default the newest) as :func:`history_events` gives them;
    empty when the table has no commit yet."""
    wanted = [spec.entity_key, spec.event_time, *history_columns(spec), *keep]
    try:
        table = lake.read("events", version=version, columns=wanted)
    except Exception:  # noqa: BLE001 - a column the spec gained after the first batches: read all, then select
        table = lake.read("events", version=version)
    if table is None:
        return history_events(pl.DataFrame({spec.entity_key: [], spec.event_time: []},
                                           schema={spec.entity_key: pl.String, spec.event_time: UTC_US}), spec)
    return history_events(table, spec, keep=keep)


def _aggregate(name: str, h: HistoryFeature) -> pl.Expr:
    if h.agg == "count":
        return pl.len().cast(pl.Float64).alias(name)
    col = pl.col(h.column)
    if h.agg == "sum":  # a window without a value is missing, not 0 (SQL's SUM)
        return pl.when(col.count() > 0).then(col.sum()).otherwise(None).alias(name)
    return getattr(col, h.agg)().cast(pl.Float64).alias(name)


def feature_rows(events: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """One row per (entity, event time p) of :func:`history_events`' frame: ``ENTITY``, ``TIME`` and
    every history feature over (p - window, p], all events at p included; sorted by time."""
    names = list(spec.history)
    by_window: dict[timedelta, list[pl.Expr]] = {}
    for name, h in spec.history.items():
        by_window.setdefault(h.period, []).append(_aggregate(name, h))
    out: pl.DataFrame | None = None
    for period, aggs in by_window.items():
        # rows at the same time share one window (it reaches to p, ties included): keep one per time
        rows = (events.rolling(index_column=TIME, period=period, closed="right", group_by=ENTITY).agg(aggs)
                .unique([ENTITY, TIME], keep="first", maintain_order=True))
        out = rows if out is None else out.join(rows, on=[ENTITY, TIME], how="left")
    if out is None or out.height == 0:
        return pl.DataFrame(schema={ENTITY: pl.String, TIME: UTC_US, **{n: pl.Float64 for n in names}})
    return out.select(ENTITY, TIME, *[pl.col(n).cast(pl.Float64) for n in names]).sort(TIME, maintain_order=True)


def latest_rows(events: pl.DataFrame, spec: Spec) -> pl.DataFrame:
    """Each entity's feature row as of its newest event (what the online store holds)."""
    return feature_rows(events, spec).unique(ENTITY, keep="last", maintain_order=True)


def join_history(table: pa.Table, spec: Spec, events: pl.DataFrame) -> pa.Table:
    """``table`` with every history feature appended, each row joined as of its event time to the
    newest feature row of its entity strictly before it (``events`` from :func:`history_events`)."""
    if not spec.history:
        return table
    return join_feature_rows(table, spec, feature_rows(events, spec))


def join_feature_rows(table: pa.Table, spec: Spec, rows: pl.DataFrame) -> pa.Table:
    """:func:`join_history` onto feature rows computed once (by :func:`feature_rows`), e.g. for many chunks."""
    left = pl.from_arrow(table.select([spec.entity_key, spec.event_time])).select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias(ROW), pl.col(spec.entity_key).cast(pl.String).alias(ENTITY),
        pl.col(spec.event_time).cast(UTC_US).alias(TIME))
    dated = left.filter(pl.col(TIME).is_not_null()).sort(TIME, maintain_order=True)
    joined = dated.join_asof(rows, on=TIME, by=ENTITY, strategy="backward",
                             allow_exact_matches=False, check_sortedness=False)
    joined = left.select(ROW).join(joined.drop(ENTITY, TIME), on=ROW, how="left").sort(ROW)
    out = table
    for name, default in missing_values(spec).items():
        values = joined[name] if default is None else joined[name].fill_null(default)
        column = values.to_arrow().cast(pa.float64())
        if name in out.column_names:  # the history is the authority on its features
            out = out.set_column(out.column_names.index(name), name, column)
        else:
            out = out.append_column(name, column)
    return out


def store_rows(rows: pl.DataFrame, spec: Spec) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Feature rows as the online store's ``write_many`` takes them: values and event times (µs) by entity."""
    names = list(spec.history)
    values = {r[0]: dict(zip(names, r[1:])) for r in rows.select(ENTITY, *names).iter_rows()}
    times = dict(zip(rows[ENTITY].to_list(), rows[TIME].dt.epoch("us").to_list()))
    return values, times


def with_joined_features(model: Any, spec: Spec, lake: Lake) -> Any:
    """The poisoning guard's model (a dataclass with ``score(frame)``, see
    :func:`tidal.registry.bundle.guard_model`) scoring each batch with its lookup and history
    features joined point-in-time, as in training (history: each entity's events already in the
    lake before the row). A lookup without data yet is left out rather than failing the batch.
    ``model`` unchanged when the spec joins nothing."""
    if model is None or not (spec.lookups or spec.history):
        return model
    score = model.score

    def joined(frame: Any) -> Any:
        table = frame.to_arrow()
        if spec.history:  # only the batch's entities' events matter: an entity's rows see only its own
            events = read_events(lake, spec)
            mine = pl.from_arrow(table.column(spec.entity_key)).cast(pl.String).unique().drop_nulls()
            table = join_history(table, spec, events.filter(pl.col(ENTITY).is_in(mine.implode())))
        try:
            table = join_lookups(table, spec, lake)
        except StateError:
            pass
        return score(pl.from_arrow(table))

    return replace(model, score=joined)
