"""History features online: the online store filled from the lake, and read on the hot path.

The store holds each entity's feature row as of its newest event (:func:`materialize`,
Feast's ``materialize``): what the offline join (:func:`tidal.features.history.join_history`)
gives any row later than that event. Rows are always recomputed from the lake's events, for
the entities a batch touched, so an event that arrives out of order lands in the right
windows; the store keeps the newest event time per entity and lets an equal time replace
(a recomputation), so materializing again is harmless.

:class:`OnlineHistory` is what the server holds: :meth:`~OnlineHistory.fill` merges one
``get_many`` of the store into the request records; :meth:`~OnlineHistory.sync` brings the
store up to the lake's newest events version (every entity the first time, then only the
entities of the batches committed since), after an HTTP ingest and on the reload tick.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, MutableMapping, Sequence
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

import polars as pl

from tidal.features.history import BATCH, ENTITY, latest_rows, missing_values, read_events, store_rows
from tidal.features.store import OnlineStore, open_store
from tidal.infra.lake import Lake
from tidal.spec import Spec


def open_history_store(spec: Spec) -> OnlineStore:
    """The spec's online store (``online_store``) of its history features; the caller closes it."""
    return open_store(spec.online_store, feature_names=list(spec.history), use_case=spec.name)


def materialize(store: OnlineStore, lake: Lake, spec: Spec, *, entities: Iterable[str] | None = None,
                events: pl.DataFrame | None = None) -> int:
    """Write each entity's feature row as of its newest event (only ``entities``, when given) from the
    lake's newest events (or ``events``, from :func:`read_events`); return the rows written."""
    if events is None:
        events = read_events(lake, spec)
    if entities is not None:
        events = events.filter(pl.col(ENTITY).is_in(pl.Series(list(entities), dtype=pl.String).implode()))
    if events.height == 0:
        return 0
    rows, times = store_rows(latest_rows(events, spec), spec)
    return store.write_many(rows, times)


def batch_entities(lake: Lake, spec: Spec, batch_ids: Iterable[str]) -> list[str]:
    """The entities whose events the given batches committed."""
    ids = list(batch_ids)
    if not ids:
        return []
    table = lake.read("events", columns=[BATCH, spec.entity_key])
    if table is None:
        return []
    df = pl.from_arrow(table)
    return (df.filter(pl.col(BATCH).is_in(pl.Series(ids, dtype=pl.String).implode()))[spec.entity_key]
            .cast(pl.String).drop_nulls().unique().to_list())


class OnlineHistory:
    """The spec's history features at serving time, from an online store kept in step with the lake."""

    def __init__(self, spec: Spec, store: OnlineStore) -> None:
        self.spec = spec
        self.store = store
        self.entity_key = spec.entity_key
        self.event_time = spec.event_time
        self.missing = MappingProxyType(missing_values(spec))  # an entity without an earlier event
        self.version: int | None = None  # the events version the store is in step with
        self._batches: frozenset[str] | None = None  # the batches materialized so far
        self._lock = threading.Lock()

    def fill(self, records: Sequence[MutableMapping[str, Any]], *, now: datetime | None = None) -> None:
        """Merge each record's entity's history values into it, in place (one ``get_many``).

        A record without an event time gets ``now`` (default the current time), so the
        prediction log shows when its history was read.
        """
        key, event_time, missing = self.entity_key, self.event_time, self.missing
        entities = [rec.get(key) for rec in records]
        known = [i for i, e in enumerate(entities) if e is not None]
        found = self.store.get_many([entities[i] for i in known]) if known else []
        values: list[Any] = [None] * len(records)
        for i, row in zip(known, found):
            values[i] = row
        at = None
        for rec, row in zip(records, values):
            rec.update(missing if row is None else row)
            if rec.get(event_time) is None:
                at = at or now or datetime.now(timezone.utc)
                rec[event_time] = at

    def sync(self, lake: Lake) -> int:
        """Bring the store up to the lake's newest events: every entity the first time, then the
        entities of the batches committed since. Returns the rows written (0 when in step)."""
        with self._lock:
            version = lake.version("events")
            if version is None or version == self.version:
                return 0
            events = read_events(lake, self.spec, version, keep=(BATCH,))
            batches = frozenset(events[BATCH].drop_nulls().unique().to_list()) if BATCH in events.columns else None
            entities = None
            if self._batches is not None and batches is not None:
                fresh = events.filter(~pl.col(BATCH).is_in(pl.Series(list(self._batches), dtype=pl.String).implode()))
                entities = fresh[ENTITY].unique().to_list()
            written = materialize(self.store, lake, self.spec, entities=entities, events=events.drop(BATCH, strict=False))
            self.version, self._batches = version, batches
            return written

