"""The online feature store: the in-process and Redis stores answer alike, keep the newest event, isolate namespaces."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from tests.conftest import CHURN_SPEC
from tests.data.sources.conftest import redis_url
from tidal.errors import DataValidationError, SpecError, StateError
from tidal.features.store import InProcessStore, OnlineStore, RedisStore, open_store
from tidal.spec import parse_spec

NAMES = ("spend_30d", "orders_7d", "last_channel", "is_vip", "days_since_signup")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _ts(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def redis_store_factory():
    """Make RedisStores on the local server, each namespace fresh and deleted afterwards."""
    url = redis_url()
    made: list[RedisStore] = []

    def make(namespace: str | None = None, names=NAMES) -> RedisStore:
        store = RedisStore(feature_names=names, namespace=namespace or f"test-{uuid.uuid4().hex[:10]}", url=url)
        made.append(store)
        return store

    yield make
    for store in made:
        store.clear()
        store.close()


@pytest.fixture(params=["memory", "redis"])
def store(request) -> OnlineStore:
    if request.param == "memory":
        return InProcessStore(feature_names=NAMES)
    return request.getfixturevalue("redis_store_factory")()


WRITES = [  # (rows, timestamps), applied in order: out of order in time, with gaps and corrections
    ({"c1": {"spend_30d": 10.5, "orders_7d": 2, "last_channel": "web", "is_vip": False, "days_since_signup": 40},
      "c2": {"spend_30d": 0.0, "orders_7d": 0, "last_channel": None, "is_vip": True}},
     {"c1": _ts(10), "c2": _ts(5)}),
    ({"c1": {"spend_30d": 99.0, "orders_7d": 9, "last_channel": "app"},  # older than c1's: ignored
      "c3": {"spend_30d": float("nan"), "orders_7d": 1, "last_channel": "shop", "is_vip": None}},
     {"c1": _ts(3), "c3": _ts(1)}),
    ({"c2": {"spend_30d": 7.25, "orders_7d": 1, "last_channel": "app", "is_vip": True, "days_since_signup": 3},
      42: {"spend_30d": -1.5, "orders_7d": 10**12}},  # newer c2; an int entity id is stored as text
     {"c2": _ts(6), 42: _ts(0)}),
    ({"c3": {"spend_30d": 1.0, "orders_7d": 1, "last_channel": "shop (corrected)", "is_vip": False}},
     {"c3": _ts(1)}),  # the same event time again: a correction replaces it
]
EXPECTED = {
    "c1": {"spend_30d": 10.5, "orders_7d": 2, "last_channel": "web", "is_vip": False, "days_since_signup": 40},
    "c2": {"spend_30d": 7.25, "orders_7d": 1, "last_channel": "app", "is_vip": True, "days_since_signup": 3},
    "c3": {"spend_30d": 1.0, "orders_7d": 1, "last_channel": "shop (corrected)", "is_vip": False,
           "days_since_signup": None},
    "42": {"spend_30d": -1.5, "orders_7d": 10**12, "last_channel": None, "is_vip": None, "days_since_signup": None},
}


def _apply(store: OnlineStore) -> list[int]:
    return [store.write_many(rows, ts) for rows, ts in WRITES]


def _typed(values):
    """Values with their exact types, so that 1 == 1.0 == True cannot hide a difference."""
    return None if values is None else {k: (type(v).__name__, v) for k, v in values.items()}


def test_writes_keep_the_newest_event_per_entity(store):
    assert _apply(store) == [2, 1, 2, 1]  # c1's older write is ignored
    for entity, values in EXPECTED.items():
        assert _typed(store.get(entity)) == _typed(values)
    assert store.get(42) == EXPECTED["42"]
    assert list(store.get("c1")) == list(NAMES)  # values come in feature_names order


def test_missing_entities_return_none(store):
    _apply(store)
    assert store.get("nobody") is None
    got = store.get_many(["c2", "nobody", 42, "c1", "also-nobody"])
    assert [_typed(v) for v in got] == [_typed(EXPECTED["c2"]), None, _typed(EXPECTED["42"]),
                                        _typed(EXPECTED["c1"]), None]
    assert store.get_many([]) == []


def test_memory_and_redis_give_identical_results(redis_store_factory):
    memory, shared = InProcessStore(feature_names=NAMES), redis_store_factory()
    assert _apply(memory) == _apply(shared)
    rng = np.random.default_rng(3)
    rows = {f"e{i}": {"spend_30d": float(rng.normal()), "orders_7d": int(rng.integers(0, 50)),
                      "last_channel": str(rng.choice(["web", "app", "é-shop ✓"])), "is_vip": bool(rng.random() < .5),
                      "days_since_signup": None if i % 7 == 0 else np.float32(rng.random())} for i in range(1200)}
    times = {e: _ts(int(rng.integers(0, 100))) for e in rows}  # more than one Lua chunk
    assert memory.write_many(rows, times) == shared.write_many(rows, times) == 1200
    older = {e: {"spend_30d": 0.0} for e in rows}
    stale = {e: t - timedelta(seconds=1) for e, t in times.items()}
    assert memory.write_many(older, stale) == shared.write_many(older, stale) == 0
    entities = [*EXPECTED, *rows, "nobody"]
    assert [_typed(v) for v in memory.get_many(entities)] == [_typed(v) for v in shared.get_many(entities)]
    assert all(_typed(memory.get(e)) == _typed(shared.get(e)) for e in entities)


def test_values_round_trip_their_types(store):
    values = {"spend_30d": 0.1 + 0.2, "orders_7d": -(2**53) - 1, "last_channel": "naïve 😀 \"q\" \\",
              "is_vip": True, "days_since_signup": None}
    store.write_many({"x": values}, {"x": T0})
    assert _typed(store.get("x")) == _typed(values)
    numpy_values = {"spend_30d": np.float64(2.5), "orders_7d": np.int64(7), "is_vip": np.bool_(False),
                    "days_since_signup": float("-inf")}
    store.write_many({"y": numpy_values}, {"y": 1_700_000_000_000_000})  # event time as µs since the epoch
    assert _typed(store.get("y")) == _typed({"spend_30d": 2.5, "orders_7d": 7, "last_channel": None,
                                             "is_vip": False, "days_since_signup": None})


def test_invalid_writes_are_refused_whole_with_every_problem(store):
    rows = {"ok": {"spend_30d": 1.0}, "a": {"nope": 1.0}, "b": {"spend_30d": [1, 2]}, "c": {"spend_30d": 2.0}}
    with pytest.raises(DataValidationError) as err:
        store.write_many(rows, {"ok": T0, "a": T0, "b": T0})
    message = str(err.value)
    assert "3 row(s)" in message and "'nope'" in message and "list" in message and "no event time" in message
    assert store.get("ok") is None  # nothing written
    with pytest.raises(DataValidationError, match="event time"):
        store.write_many({"ok": {"spend_30d": 1.0}}, {"ok": "2024-01-01"})


def test_two_redis_stores_share_writes_like_two_serving_processes(redis_store_factory):
    namespace = f"test-{uuid.uuid4().hex[:10]}"
    ingester, server = redis_store_factory(namespace), redis_store_factory(namespace)
    assert server.get("c1") is None
    _apply(ingester)
    assert server.get_many(["c1", "c2"]) == [EXPECTED["c1"], EXPECTED["c2"]]
    assert server.write_many({"c1": {"spend_30d": 1.0}}, {"c1": _ts(2)}) == 0  # older than the ingester's
    assert server.write_many({"c1": {"spend_30d": 1.0}}, {"c1": _ts(20)}) == 1
    assert ingester.get("c1")["spend_30d"] == 1.0
    other = redis_store_factory(namespace, names=("spend_30d", "orders_7d"))
    with pytest.raises(StateError, match="holds other features"):
        other.get("c1")
    other.clear()  # the fix the error names: the namespace is then the new feature list's
    assert other.get("c1") is None
    other.write_many({"c1": {"orders_7d": 3}}, {"c1": T0})
    assert other.get("c1") == {"spend_30d": None, "orders_7d": 3}


def test_namespaces_isolate_use_cases(redis_store_factory):
    churn, fraud = redis_store_factory(), redis_store_factory()
    churn.write_many({"c1": {"spend_30d": 1.0}}, {"c1": T0})
    fraud.write_many({"c1": {"spend_30d": 2.0}}, {"c1": _ts(-5)})  # older, but in another namespace
    assert churn.get("c1")["spend_30d"] == 1.0 and fraud.get("c1")["spend_30d"] == 2.0
    fraud.clear()
    assert fraud.get("c1") is None and churn.get("c1")["spend_30d"] == 1.0
    with pytest.raises(ValueError, match="namespace"):
        RedisStore(feature_names=NAMES, namespace="a:b")


def test_in_process_readers_never_see_a_half_written_entity():
    store = InProcessStore(feature_names=NAMES[:2])
    store.write_many({"c": {"spend_30d": 0.0, "orders_7d": 0}}, {"c": 0})
    done, mixed = threading.Event(), []

    def read():
        while not done.is_set():
            values = store.get("c")
            if values["spend_30d"] != values["orders_7d"]:
                mixed.append(dict(values))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for i in range(1, 20_000):
        store.write_many({"c": {"spend_30d": float(i), "orders_7d": i}}, {"c": i})
    done.set()
    for t in readers:
        t.join()
    assert mixed == [] and store.get("c") == {"spend_30d": 19_999.0, "orders_7d": 19_999}
    with pytest.raises(TypeError):
        store.get("c")["spend_30d"] = 1.0  # shared and read-only


def test_the_spec_section_opens_the_store(redis_store_factory):
    spec = parse_spec(CHURN_SPEC)
    assert spec.online_store.kind == "memory"
    memory = open_store(spec.online_store, feature_names=NAMES, use_case=spec.name)
    assert isinstance(memory, InProcessStore) and isinstance(memory, OnlineStore)

    url = redis_url()
    spec = parse_spec({**CHURN_SPEC, "online_store": {"kind": "redis", "url": url}})
    shared = open_store(spec.online_store, feature_names=NAMES, use_case=f"churn-{uuid.uuid4().hex[:8]}")
    try:
        assert isinstance(shared, RedisStore) and isinstance(shared, OnlineStore)
        assert shared.namespace.startswith("churn-") and shared.url == url
        shared.write_many({"c1": {"is_vip": True}}, {"c1": T0})
        assert shared.get("c1")["is_vip"] is True
    finally:
        shared.clear()

    with pytest.raises(SpecError, match="apply only to kind redis"):
        parse_spec({**CHURN_SPEC, "online_store": {"kind": "memory", "namespace": "x"}})
    with pytest.raises(SpecError, match="online_store.kind"):
        parse_spec({**CHURN_SPEC, "online_store": {"kind": "memcached"}})
