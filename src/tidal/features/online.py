"""The online lookup index: each lookup's readings in memory, for the serving hot path.

Per lookup, a dict from the key tuple to (sorted reading times, feature values): a request
row takes the newest reading of its keys at or before its event time (or now, when the
request has none), within ``max_age_hours``: one dict lookup and one bisect, no pandas.
It holds the same readings as the offline join (:func:`tidal.features.lookups.lookup_readings`)
and applies the same rule, so a row gets the same values online and offline.

:meth:`OnlineLookups.refresh` rebuilds a lookup whose table version changed and swaps it in
with one assignment, so requests in flight finish on the index they started with.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from tidal.features.lookups import TIME, lookup_readings, max_age
from tidal.infra.lake import Lake, lookup_table
from tidal.spec import Spec

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class _Index:
    version: int
    keys: tuple[str, ...]
    features: tuple[str, ...]
    max_age_us: int | None
    readings: dict[tuple[str | None, ...], tuple[list[int], list[tuple[Any, ...]]]]


def _utc(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _key(value: Any) -> str | None:
    return value if value is None or type(value) is str else str(value)


class OnlineLookups:
    """Every lookup of a spec, indexed in memory. Build, then :meth:`refresh` from the lake."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.event_time = spec.event_time
        self._indexes: dict[str, _Index] = {}

    @property
    def versions(self) -> dict[str, int | None]:
        """The lookup table version each index holds (None: not loaded)."""
        indexes = self._indexes
        return {name: indexes[name].version if name in indexes else None for name in self.spec.lookups}

    @property
    def missing(self) -> list[str]:
        """Lookups with no data loaded yet."""
        return [name for name in self.spec.lookups if name not in self._indexes]

    def refresh(self, lake: Lake) -> list[str]:
        """Rebuild every lookup whose table version changed; return the names rebuilt."""
        rebuilt = []
        for name, lookup in self.spec.lookups.items():
            version = lake.version(lookup_table(name))
            current = self._indexes.get(name)
            if version is None or (current is not None and current.version == version):
                continue
            df = lookup_readings(lake, self.spec, name, version)
            features = tuple(lookup.features)
            readings: dict[tuple[str | None, ...], tuple[list[int], list[tuple[Any, ...]]]] = {}
            times = df[TIME].dt.epoch("us").to_list()
            values = df.select(features).rows()
            for i, key in enumerate(zip(*(df[k].to_list() for k in lookup.keys))):  # sorted by time already
                entry = readings.get(key)
                if entry is None:
                    entry = readings[key] = ([], [])
                entry[0].append(times[i])
                entry[1].append(values[i])
            age = max_age(lookup)
            index = _Index(version=version, keys=tuple(lookup.keys), features=features, readings=readings,
                           max_age_us=None if age is None else age // MICROSECOND)
            self._indexes = {**self._indexes, name: index}  # one assignment: readers see the old or the new
            rebuilt.append(name)
        return rebuilt

    def lookup(self, records: Sequence[MutableMapping[str, Any]], *, now: datetime | None = None) -> None:
        """Fill every lookup feature of each record in place, as of the record's event time.

        A record without an event time is looked up as of ``now`` (default the current time),
        which is then written into the record, so the prediction log shows the time used.
        """
        indexes = tuple(self._indexes.values())
        event_time = self.event_time
        at_now = None
        for rec in records:
            at = _utc(rec.get(event_time))
            if at is None:
                if at_now is None:
                    at_now = now or datetime.now(timezone.utc)
                at = at_now
            rec[event_time] = at
            t = (at - EPOCH) // MICROSECOND
            for index in indexes:
                entry = index.readings.get(tuple(_key(rec.get(k)) for k in index.keys))
                values = None
                if entry is not None:
                    i = bisect_right(entry[0], t) - 1
                    if i >= 0 and (index.max_age_us is None or t - entry[0][i] <= index.max_age_us):
                        values = entry[1][i]
                if values is None:
                    for feat in index.features:
                        rec[feat] = None
                else:
                    for feat, value in zip(index.features, values):
                        rec[feat] = value
