"""The online feature store: each entity's newest history features, for the serving hot path.

History features (a customer's spend over 30 days, a card's count of declines...) are
computed from the events as they are ingested, and serving needs them for one entity in
microseconds. An :class:`OnlineStore` holds, per entity, the feature values as of its
newest event, and answers with one lookup:

- :class:`InProcessStore` (``online_store: {kind: memory}``, the default): a plain dict in
  the serving process, from the entity to a prebuilt read-only mapping of its values. A
  read is one dict lookup, lock-free; writes take a lock and replace each entity's mapping
  with one assignment, so a reader sees an entity's old values or its new ones, never a mix.
- :class:`RedisStore` (``online_store: {kind: redis, url, namespace}``): one Redis string per
  entity, ``tidal:NAMESPACE:ENTITY``, holding ``[event time, value, ...]`` as compact JSON
  (orjson) in :attr:`~OnlineStore.feature_names` order. A read is one GET (one entity) or one
  MGET (many) over a pooled connection, so several serving processes, and the ingester, share
  one copy. Writes are pipelined Lua calls that keep the newer event time.

Both stores keep the newest write per entity by *event time*, not arrival: a write older than
what an entity holds is ignored (an equal time replaces it: a correction), so events ingested
out of order or replayed never roll an entity back. Values are float, int, str, bool or None;
NaN and infinities are stored as None (missing), identically in both stores.

How serving will use it (wired elsewhere): the server opens the store once at start-up with
``open_store(spec.online_store, feature_names=..., use_case=spec.name)``. On each request it
calls ``store.get(entity)`` (or ``get_many`` for a batch) with the request's entity key and
merges the values into the record before the compiled pipeline; an unknown entity gives None,
which the pipeline treats as missing features. With the memory store, the serving process
itself applies ``write_many`` as its ingest routes accept events; with Redis, whichever
process ingests writes and every serving process reads. The Redis client is synchronous: a
GET takes about 0.1 ms on a local network, less than a hop to a thread pool would cost.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from tidal.errors import DataValidationError, StateError
from tidal.spec import NAMESPACE_PATTERN
from tidal.spec import OnlineStore as OnlineStoreSpec

if TYPE_CHECKING:
    from redis import Redis

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
REDIS_URL = "redis://127.0.0.1:6379/0"
Values = Mapping[str, Any]  # one entity's features, by name (read-only)
Timestamp = datetime | int  # an event time: a datetime (naive = UTC) or microseconds since the epoch


@runtime_checkable
class OnlineStore(Protocol):
    """Each entity's newest feature values: written as events are ingested, read by serving."""

    feature_names: tuple[str, ...]

    def write_many(self, rows: Mapping[Any, Mapping[str, Any]], timestamps: Mapping[Any, Timestamp]) -> int:
        """Store each entity's values as of its event time in ``timestamps``; return how many were newer
        (or as new) as what the store held and so were written. Features a row omits are stored as None."""

    def get(self, entity: Any) -> Values | None:
        """The entity's newest values, or None when the store has none."""

    def get_many(self, entities: Iterable[Any]) -> list[Values | None]:
        """:meth:`get` for each entity, in order."""

    def clear(self) -> None:
        """Forget every entity."""

    def close(self) -> None:
        """Release connections; the store can be reopened by using it again."""


def _micros(entity: str, ts: Any) -> int:
    if type(ts) is int:
        return ts
    if isinstance(ts, datetime):
        ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts
        return (ts - EPOCH) // _MICROSECOND
    raise DataValidationError(f"entity {entity!r}: event time {ts!r} ({type(ts).__name__}) is not a datetime "
                              "or an int of microseconds since the epoch", fix="pass a datetime per entity")


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc) - EPOCH
_SCALARS = (str, bool, int)


def _value(entity: str, name: str, v: Any) -> Any:
    if v is None or type(v) in _SCALARS:
        return v
    if isinstance(v, float):  # float, numpy.float64
        return float(v) if math.isfinite(v) else None
    item = getattr(v, "item", None)  # other numpy scalars
    if item is not None and getattr(v, "ndim", None) == 0:
        return _value(entity, name, item())
    raise DataValidationError(f"entity {entity!r}: feature {name!r} is {v!r} ({type(v).__name__}); the online store "
                              "holds float, int, str, bool or None", fix="convert the value before writing it")


class _Schema:
    """The feature names, and the checks both stores apply to a write, so they store the same values."""

    def __init__(self, feature_names: Sequence[str]) -> None:
        names = tuple(feature_names)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"feature_names must be distinct strings, at least one; got {list(names)!r}")
        self.names = names
        self.known = frozenset(names)

    def rows(self, rows: Mapping[Any, Mapping[str, Any]],
             timestamps: Mapping[Any, Timestamp]) -> list[tuple[str, int, tuple[Any, ...]]]:
        """(entity as text, event time in µs, values in name order) per row, or every problem at once."""
        out, problems = [], []
        for entity, row in rows.items():
            key = entity if type(entity) is str else str(entity)
            unknown = row.keys() - self.known
            if unknown:
                names = ", ".join(repr(u) for u in sorted(map(str, unknown)))
                problems.append(f"entity {key!r}: unknown feature(s) {names}")
                continue
            if entity not in timestamps:
                problems.append(f"entity {key!r}: no event time")
                continue
            try:
                ts = _micros(key, timestamps[entity])
                values = tuple(_value(key, n, row.get(n)) for n in self.names)
            except DataValidationError as exc:
                problems.append(exc.message)
                continue
            out.append((key, ts, values))
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DataValidationError(f"{len(problems)} row(s) cannot be written to the online store: {shown}",
                                      fix=f"write only the store's features ({', '.join(self.names[:10])}"
                                          f"{', ...' if len(self.names) > 10 else ''}) with an event time per entity")
        return out


class InProcessStore:
    """The online store in the serving process's memory: a dict lookup per read.

    ``get`` returns a shared read-only mapping (no copy); copy it before changing it.
    """

    def __init__(self, *, feature_names: Sequence[str]) -> None:
        self._schema = _Schema(feature_names)
        self.feature_names = self._schema.names
        self._rows: dict[str, Values] = {}
        self._times: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def write_many(self, rows: Mapping[Any, Mapping[str, Any]], timestamps: Mapping[Any, Timestamp]) -> int:
        checked = self._schema.rows(rows, timestamps)
        names = self.feature_names
        written = 0
        with self._lock:
            stored, times = self._rows, self._times
            for key, ts, values in checked:
                if times.get(key, ts) > ts:
                    continue  # the store holds a newer event
                times[key] = ts
                stored[key] = MappingProxyType(dict(zip(names, values)))  # one assignment: old or new, never a mix
                written += 1
        return written

    def get(self, entity: Any) -> Values | None:
        return self._rows.get(entity if type(entity) is str else str(entity))

    def get_many(self, entities: Iterable[Any]) -> list[Values | None]:
        rows = self._rows
        return [rows.get(e if type(e) is str else str(e)) for e in entities]

    def clear(self) -> None:
        with self._lock:
            self._rows = {}  # readers holding the old dict finish on it
            self._times = {}

    def close(self) -> None:
        pass


# Write KEYS[i] = ARGV[2i] unless it holds a later event time than ARGV[2i-1]; return the count written.
# A stored value is "[time,v1,v2,...]": its time is the leading integer.
_WRITE_NEWER = """
local written = 0
for i, key in ipairs(KEYS) do
  local ts = tonumber(ARGV[2 * i - 1])
  local current = redis.call('GET', key)
  local held = current and tonumber(string.match(current, '^%[(%-?%d+)'))
  if not held or held <= ts then
    redis.call('SET', key, ARGV[2 * i])
    written = written + 1
  end
end
return written
"""


class RedisStore:
    """The online store in Redis, shared by every serving process: one GET per entity, one MGET per batch.

    Keys are ``tidal:NAMESPACE:ENTITY``; ``tidal:NAMESPACE`` records the feature names, so a
    process with another feature list refuses the namespace instead of misreading it.
    Connections come from a pool opened on first use.
    """

    CHUNK = 500  # entities per Lua call when writing (a pipeline sends them all in one round trip)

    def __init__(self, *, feature_names: Sequence[str], namespace: str, url: str = REDIS_URL,
                 max_connections: int = 32) -> None:
        if not re.fullmatch(NAMESPACE_PATTERN, namespace):
            raise ValueError(f"namespace must match {NAMESPACE_PATTERN} (letters, digits, _ . -); got {namespace!r}")
        self._schema = _Schema(feature_names)
        self.feature_names = self._schema.names
        self.namespace = namespace
        self.url = url
        self.max_connections = max_connections
        self._prefix = f"tidal:{namespace}:"
        self._redis: Redis | None = None
        self._script: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Redis:
        client = self._redis
        if client is None:
            with self._lock:
                if self._redis is None:
                    self._redis = self._connect()
                client = self._redis
        return client

    def _open(self) -> Redis:
        import redis

        pool = redis.ConnectionPool.from_url(self.url, max_connections=self.max_connections)
        return redis.Redis(connection_pool=pool)

    def _connect(self) -> Redis:
        client = self._open()
        pool = client.connection_pool
        names = orjson.dumps(list(self.feature_names))
        key = self._prefix[:-1]  # tidal:NAMESPACE, beside the entities' tidal:NAMESPACE:ENTITY
        try:
            if not client.set(key, names, nx=True) and (held := client.get(key)) != names:
                raise StateError(
                    f"the online store namespace {self.namespace!r} at {self.url} holds other features "
                    f"({', '.join(orjson.loads(held))[:200]})",
                    fix="use another online_store.namespace for this feature list, or clear the namespace")
        except BaseException:
            pool.disconnect()
            raise
        self._script = client.register_script(_WRITE_NEWER)
        return client

    def write_many(self, rows: Mapping[Any, Mapping[str, Any]], timestamps: Mapping[Any, Timestamp]) -> int:
        checked = self._schema.rows(rows, timestamps)
        if not checked:
            return 0
        client, prefix, dumps = self._client(), self._prefix, orjson.dumps
        with client.pipeline(transaction=False) as pipe:
            for start in range(0, len(checked), self.CHUNK):
                keys, args = [], []
                for key, ts, values in checked[start:start + self.CHUNK]:
                    keys.append(prefix + key)
                    args += (ts, dumps((ts, *values)))
                self._script(keys=keys, args=args, client=pipe)
            return sum(pipe.execute())

    def get(self, entity: Any) -> Values | None:
        raw = self._client().get(self._prefix + (entity if type(entity) is str else str(entity)))
        return None if raw is None else dict(zip(self.feature_names, orjson.loads(raw)[1:]))

    def get_many(self, entities: Iterable[Any]) -> list[Values | None]:
        prefix = self._prefix
        keys = [prefix + (e if type(e) is str else str(e)) for e in entities]
        if not keys:
            return []
        names, loads = self.feature_names, orjson.loads
        return [None if raw is None else dict(zip(names, loads(raw)[1:])) for raw in self._client().mget(keys)]

    def clear(self) -> None:
        """Delete every key of this namespace (and only of it), the feature list included, whatever it holds."""
        client = self._open()  # not _client(): clearing a namespace that holds other features is allowed
        try:
            batch = []
            for key in client.scan_iter(match=self._prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.unlink(*batch)
                    batch = []
            client.unlink(self._prefix[:-1], *batch)
        finally:
            client.connection_pool.disconnect()
        self.close()  # the next use records the feature list again

    def close(self) -> None:
        with self._lock:
            if self._redis is not None:
                self._redis.connection_pool.disconnect()
                self._redis = None


def open_store(config: OnlineStoreSpec, *, feature_names: Sequence[str], use_case: str) -> OnlineStore:
    """The store the spec's ``online_store`` section describes; the namespace defaults to the use case's name."""
    if config.kind == "redis":
        return RedisStore(feature_names=feature_names, namespace=config.namespace or use_case,
                          url=config.url or REDIS_URL)
    return InProcessStore(feature_names=feature_names)
