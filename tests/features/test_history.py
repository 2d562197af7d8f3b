"""History features: point-in-time correct offline, the same values in the online store, in memory and in Redis."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import polars as pl
import pyarrow as pa
import pytest

from tests.data.sources.conftest import redis_url
from tidal.data.ingest import ingest_frame
from tidal.errors import SpecError
from tidal.features.history import history_events, join_history, latest_rows, read_events
from tidal.features.online_history import OnlineHistory, materialize
from tidal.features.store import InProcessStore, RedisStore
from tidal.spec import parse_spec

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
SPEC = {
    "name": "cards", "task": "binary", "target": "fraud", "entity_key": "card", "event_time": "ts",
    "features": {"amount": {"type": "numeric"}, "channel": {"type": "categorical"}},
    "history": {
        "txn_1h": {"agg": "count", "window": "1h"},
        "spend_1h": {"agg": "sum", "column": "amount", "window": "1h"},
        "avg_1d": {"agg": "mean", "column": "amount", "window": "1d"},
        "min_1d": {"agg": "min", "column": "amount", "window": "1d"},
        "max_30m": {"agg": "max", "column": "amount", "window": "30m"},
    },
    "validation": {"unique_key": False},  # ties at one time are legitimate events here
    "training": {"num_boost_round": 20},
}
AGGS = {"count": len, "sum": sum, "mean": lambda v: sum(v) / len(v), "min": min, "max": max}


def _t(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# (card, minutes after T0, amount): ties at one time, nulls, events far apart, several cards
EVENTS = [("a", 0, 10.0), ("a", 20, 5.0), ("a", 20, 7.0), ("a", 20, None), ("b", 20, 100.0), ("a", 50, 1.0),
          ("a", 95, 2.0), ("a", 200, None), ("a", 2000, 3.0), ("b", 21, 50.0), ("c", 5, None)]


def _table(rows) -> pa.Table:
    return pa.table({"card": [r[0] for r in rows],
                     "ts": pa.array([_t(r[1]) for r in rows], pa.timestamp("us", tz="UTC")),
                     "amount": pa.array([r[2] for r in rows], pa.float64()),
                     "fraud": ["0"] * len(rows)})


def _expected(spec, events, card, at: datetime) -> dict:
    """The definition, by brute force: aggregates over (p - w, p], p = the card's newest event strictly before."""
    before = [e for e in events if e[0] == card and _t(e[1]) < at]
    out = {}
    for name, h in spec.history.items():
        if not before:
            out[name] = 0.0 if h.agg == "count" else None
            continue
        p = max(_t(e[1]) for e in before)
        window = [e for e in before if p - h.period < _t(e[1]) <= p]
        if h.agg == "count":
            out[name] = float(len(window))
        else:
            values = [e[2] for e in window if e[2] is not None]
            out[name] = AGGS[h.agg](values) if values else None
    return out


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (a[k] is None and b[k] is None) or (a[k] is not None and b[k] is not None and abs(a[k] - b[k]) < 1e-9)
        for k in a)


@pytest.fixture
def spec():
    return parse_spec(SPEC)


def test_each_event_sees_only_earlier_events_of_its_entity(spec):
    events = _table(EVENTS)
    joined = join_history(events, spec, history_events(events, spec)).to_pylist()
    for row, (card, minutes, _) in zip(joined, EVENTS):
        assert _close({n: row[n] for n in spec.history}, _expected(spec, EVENTS, card, _t(minutes))), (card, minutes)
    by_key = {(r["card"], r["ts"], r["amount"]): r for r in joined}
    first = by_key[("a", _t(0), 10.0)]
    assert first["txn_1h"] == 0 and first["spend_1h"] is None and first["avg_1d"] is None  # no earlier event
    for amount in (5.0, 7.0, None):  # the three events at minute 20 see the one at 0, never each other
        assert by_key[("a", _t(20), amount)]["txn_1h"] == 1 and by_key[("a", _t(20), amount)]["spend_1h"] == 10.0
    at50 = by_key[("a", _t(50), 1.0)]  # as of minute 20: every event at 20 counts, ties included
    assert (at50["txn_1h"], at50["spend_1h"], at50["max_30m"], at50["min_1d"]) == (4.0, 22.0, 10.0, 5.0)
    at95 = by_key[("a", _t(95), 2.0)]  # as of minute 50: (-10, 50] for 1h, (20, 50] for 30m
    assert (at95["txn_1h"], at95["spend_1h"], at95["max_30m"]) == (5.0, 23.0, 1.0)
    at200 = by_key[("a", _t(200), None)]  # as of 95: the 1h window (35, 95] holds 50 and 95 only
    assert (at200["txn_1h"], at200["spend_1h"]) == (2.0, 3.0)
    at2000 = by_key[("a", _t(2000), 3.0)]  # as of 200, whose only 1h event has no amount: sum missing, count 1
    assert at2000["txn_1h"] == 1.0 and at2000["spend_1h"] is None and at2000["max_30m"] is None
    assert at2000["avg_1d"] == pytest.approx((10 + 5 + 7 + 1 + 2) / 5)
    assert by_key[("b", _t(21), 50.0)]["spend_1h"] == 100.0  # another card's events never count


def test_rows_at_any_time_including_unknown_entities_and_missing_times(spec):
    events = _table(EVENTS)
    asks = [("a", 20.0), ("a", 20.5), ("a", 10_000), ("b", 20.0), ("b", 22), ("zzz", 30), ("c", 6)]
    table = pa.table({"card": [c for c, _ in asks] + [None, "a"],
                      "ts": pa.array([_t(m) for _, m in asks] + [_t(60), None], pa.timestamp("us", tz="UTC"))})
    joined = join_history(table, spec, history_events(events, spec)).to_pylist()
    for row, (card, minutes) in zip(joined, asks):
        assert _close({n: row[n] for n in spec.history}, _expected(spec, EVENTS, card, _t(minutes))), (card, minutes)
    for row in joined[-2:]:  # no entity, or no time: as an entity never seen
        assert row["txn_1h"] == 0.0 and row["spend_1h"] is None
    assert joined[2]["txn_1h"] == 1.0  # far after: the window as of the newest event (minute 2000)
    assert joined[1]["txn_1h"] == 4.0  # just after the ties at 20: all of them


def test_latest_rows_are_what_a_later_row_gets(spec):
    events = history_events(_table(EVENTS), spec)
    latest = {r["__tidal_entity"]: r for r in latest_rows(events, spec).to_dicts()}
    assert set(latest) == {"a", "b", "c"}
    assert latest["a"]["__tidal_time"] == _t(2000) and latest["b"]["__tidal_time"] == _t(21)
    later = join_history(pa.table({"card": ["a", "b", "c"], "ts": pa.array([_t(9999)] * 3, pa.timestamp("us", "UTC"))}),
                         spec, events).to_pylist()
    for row in later:
        assert _close({n: row[n] for n in spec.history}, {n: latest[row["card"]][n] for n in spec.history})


@pytest.mark.parametrize("history, where, words", [
    ({"h": {"agg": "sum", "column": "fraud", "window": "7d"}}, "history.h.column", "labels of an entity's recent"),
    ({"h": {"agg": "mean", "column": "channel", "window": "7d"}}, "history.h.column", "categorical feature"),
    ({"h": {"agg": "max", "column": "nope", "window": "7d"}}, "history.h.column", "not a declared feature"),
    ({"h": {"agg": "sum", "column": "amount", "window": "7 days"}}, "history.h.window", "whole number and a unit"),
    ({"h": {"agg": "sum", "column": "amount", "window": "0h"}}, "history.h.window", "whole number and a unit"),
    ({"h": {"agg": "count", "column": "amount", "window": "1h"}}, "history.h", "takes no column"),
    ({"h": {"agg": "sum", "window": "1h"}}, "history.h", "needs the numeric column"),
    ({"h": {"agg": "median", "column": "amount", "window": "1h"}}, "history.h.agg", "count"),
    ({"amount": {"agg": "count", "window": "1h"}}, "history.amount", "already a declared feature"),
])
def test_spec_errors_name_the_field_and_the_fix(history, where, words):
    with pytest.raises(SpecError) as err:
        parse_spec({**SPEC, "history": history})
    problems = {p.location: p for p in err.value.problems}
    assert where in problems, problems
    assert words in problems[where].message + problems[where].fix


def test_history_needs_an_entity_and_a_time():
    with pytest.raises(SpecError) as err:
        parse_spec({**SPEC, "entity_key": None, "event_time": None})
    assert {p.location for p in err.value.problems} >= {"entity_key", "event_time"}


def test_history_features_are_model_inputs_after_the_others(spec):
    assert list(spec.model_features) == ["amount", "channel", *SPEC["history"]]
    assert all(spec.model_features[n].type == "numeric" for n in SPEC["history"])
    assert spec.history["avg_1d"].period == timedelta(days=1)


# the lake and the online store ---------------------------------------------------------------------------------

def _frame(rows) -> pl.DataFrame:
    return pl.DataFrame({"card": [r[0] for r in rows], "ts": [_t(r[1]).isoformat() for r in rows],
                         "amount": [None if r[2] is None else str(r[2]) for r in rows],
                         "channel": ["web"] * len(rows), "fraud": ["0"] * len(rows)})


def _ingest(ws, spec, rows, name: str):
    return ingest_frame(ws, spec, _frame(rows), batch_id=f"b-{name}", source="test", content_sha256=name)


def _offline_latest(ws, spec) -> dict:
    return {r["__tidal_entity"]: {n: r[n] for n in spec.history}
            for r in latest_rows(read_events(ws.lake, spec), spec).to_dicts()}


@pytest.fixture(params=["memory", "redis"])
def store(request, spec):
    if request.param == "memory":
        yield InProcessStore(feature_names=list(spec.history))
        return
    made = RedisStore(feature_names=list(spec.history), namespace=f"test-{uuid.uuid4().hex[:10]}", url=redis_url())
    yield made
    made.clear()
    made.close()


def test_the_store_follows_the_lake_out_of_order_events_included(sqlite_workspace, spec, store):
    ws = sqlite_workspace
    online = OnlineHistory(spec, store)
    _ingest(ws, spec, [e for e in EVENTS if e != ("b", 21, 50.0)], "one")
    assert online.sync(ws.lake) == 3  # every entity the first time
    assert online.sync(ws.lake) == 0  # in step: nothing to do
    first = _offline_latest(ws, spec)
    for card in ("a", "b", "c"):
        assert _close(dict(store.get(card)), first[card])
    # a late event of card a, older than its newest (minute 2000) but inside its 1h window, and a new card
    _ingest(ws, spec, [("a", 1990, 40.0), ("d", 30, 8.0)], "late")
    assert online.sync(ws.lake) == 2  # only the entities the batch touched
    after = _offline_latest(ws, spec)
    assert after["a"]["txn_1h"] == first["a"]["txn_1h"] + 1 and after["a"]["avg_1d"] != first["a"]["avg_1d"]
    for card in ("a", "b", "c", "d"):
        assert _close(dict(store.get(card)), after[card]), card
    # what the server merges: the store's values, count 0 for an unknown entity or a missing key
    records = [{"card": "a"}, {"card": "nobody"}, {"card": None}]
    online.fill(records, now=_t(5000))
    assert _close({n: records[0][n] for n in spec.history}, after["a"])
    assert records[1]["txn_1h"] == 0.0 and records[1]["avg_1d"] is None and records[2]["txn_1h"] == 0.0
    assert all(r["ts"] == _t(5000) for r in records)
    # and it is what the offline join gives the same rows at the same time
    asked = pa.table({"card": ["a", "nobody"], "ts": pa.array([_t(5000)] * 2, pa.timestamp("us", tz="UTC"))})
    offline = join_history(asked, spec, read_events(ws.lake, spec)).to_pylist()
    for rec, off in zip(records, offline):
        assert _close({n: rec[n] for n in spec.history}, {n: off[n] for n in spec.history})


def test_materialize_again_changes_nothing(sqlite_workspace, spec, store):
    ws = sqlite_workspace
    _ingest(ws, spec, EVENTS, "all")
    assert materialize(store, ws.lake, spec) == 3
    before = {c: dict(store.get(c)) for c in "abc"}
    assert materialize(store, ws.lake, spec) == 3  # equal event times replace: a recomputation
    assert {c: dict(store.get(c)) for c in "abc"} == before
    assert materialize(store, ws.lake, spec, entities=["b"]) == 1


def test_training_set_history_is_rebuilt_from_its_events_version(sqlite_workspace, spec):
    from tidal.training.dataset import training_table

    ws = sqlite_workspace
    v0 = _ingest(ws, spec, EVENTS[:8], "one").events_version
    before = training_table(ws, spec, {"events": v0})
    _ingest(ws, spec, [("a", 10, 1000.0)], "late")  # a late event that would change later rows' history
    again = training_table(ws, spec, {"events": v0})
    assert before.equals(again)
    newest = training_table(ws, spec, {"events": ws.lake.version("events")})
    key = {(r["card"], r["ts"]): r["spend_1h"] for r in newest.to_pylist()}
    assert key[("a", _t(20))] == 1010.0  # the new version's rows see the late event
    assert {(r["card"], r["ts"]): r["spend_1h"] for r in before.to_pylist()}[("a", _t(20))] == 10.0


def test_ingest_keeps_a_redis_store_in_step(tmp_path):
    import yaml

    from tidal.project import Project

    namespace = f"test-{uuid.uuid4().hex[:10]}"
    url = redis_url()
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump({**SPEC, "online_store": {"kind": "redis", "url": url,
                                                                                   "namespace": namespace}}))
    _frame([e for e in EVENTS if e[0] != "b"]).write_csv(tmp_path / "one.csv")
    _frame([("b", 20, 100.0), ("a", 1990, 40.0)]).write_csv(tmp_path / "two.csv")
    project = Project.open(tmp_path / "tidal.yaml")
    store = RedisStore(feature_names=list(project.spec.history), namespace=namespace, url=url)
    try:
        with project:
            project.ingest(tmp_path / "one.csv")
            assert store.get("a") is not None and store.get("b") is None
            project.ingest(tmp_path / "two.csv")  # a new entity, and a late event of a
            latest = _offline_latest(project.ws, project.spec)
            for card in ("a", "b", "c"):
                assert _close(dict(store.get(card)), latest[card]), card
            assert store.get("a")["txn_1h"] == 2.0
            assert project.materialize() == 3
    finally:
        store.clear()


def test_the_guard_scores_a_batch_with_its_history_as_of_the_lake(sqlite_workspace, spec):
    """with_joined_features hands the guard's scorer each row's history from the events already in the lake,
    exactly as join_history over the whole lake gives it (reading only the batch's entities' events)."""
    from dataclasses import dataclass

    from tidal.features.history import with_joined_features

    ws = sqlite_workspace
    _ingest(ws, spec, EVENTS, "first")
    seen = []

    @dataclass(frozen=True)
    class Guard:
        score: object

    guard = with_joined_features(Guard(score=lambda frame: seen.append(frame)), spec, ws.lake)
    batch = _table([("a", 60, 4.0), ("b", 30, 1.0), ("z", 10, 2.0), ("a", 2500, 9.0)])
    guard.score(pl.from_arrow(batch))
    expected = pl.from_arrow(join_history(batch, spec, read_events(ws.lake, spec)))
    assert seen[0].select(list(spec.history)).equals(expected.select(list(spec.history)))
    assert seen[0]["txn_1h"].to_list() == [_expected(spec, EVENTS, c, _t(m))["txn_1h"]
                                           for c, m in (("a", 60), ("b", 30), ("z", 10), ("a", 2500))]
