"""The metadata store on SQLite and PostgreSQL: schema, JSON and datetime round-trips, atomic stage changes."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

import tidal.infra.metadata as md
from tidal.errors import NotFound
from tidal.infra.metadata import MetadataStore, alerts, batches, model_versions, runs, stage_events

TABLES = {"batches", "runs", "model_versions", "stage_events", "monitor_results", "alerts"}


def _run_row(run_id: str = "r1", **over):
    row = {"run_id": run_id, "kind": "train", "status": "running", "params": {"a": 1},
           "metrics": {}, "data_versions": {"events": 0}, "code_version": "abc",
           "spec_sha256": "0" * 64, "started_at": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)}
    row.update(over)
    return row


def _add_version(store: MetadataStore, version: int, stage: str) -> None:
    store.insert(model_versions, {"version": version, "run_id": f"r{version}", "stage": stage,
                                  "bundle_path": f"/b/{version}", "manifest_sha256": "f" * 64,
                                  "metrics": {"auc": 0.5 + version / 100}, "created_at": md.now()})


def _stages(store: MetadataStore) -> dict[int, str]:
    return {r["version"]: r["stage"] for r in store.versions()}


def test_create_makes_every_table_and_is_idempotent(workspace):
    store = workspace.store
    assert TABLES <= set(sa.inspect(store.engine).get_table_names())
    store.create()  # a second create must not fail nor drop data
    store.insert(runs, _run_row())
    store.create()
    assert len(store.select(sa.select(runs))) == 1


def test_json_columns_round_trip(workspace):
    store = workspace.store
    params = {"nested": {"list": [1, 2.5, None, True], "text": "é✓"}, "empty": {}, "neg": -3}
    metrics = {"test": {"auc": 0.8123456789012345, "rows": 1409}, "split": "time"}
    store.insert(runs, _run_row(params=params, metrics=metrics, data_versions={"events": 3, "labels": None}))
    [row] = store.select(sa.select(runs).where(runs.c.run_id == "r1"))
    assert row["params"] == params
    assert row["metrics"] == metrics
    assert row["data_versions"] == {"events": 3, "labels": None}
    # the raw column holds text, so both backends store the same thing
    with store.engine.connect() as conn:
        raw = conn.execute(sa.select(runs.c.params)).scalar()
    assert isinstance(raw, str)


def test_update_encodes_json_and_keeps_other_columns(workspace):
    store = workspace.store
    store.insert(runs, _run_row())
    store.update(runs, runs.c.run_id == "r1", {"status": "finished", "metrics": {"test": {"auc": 0.9}}})
    row = store.one(sa.select(runs).where(runs.c.run_id == "r1"), "run r1")
    assert row["status"] == "finished"
    assert row["metrics"] == {"test": {"auc": 0.9}}
    assert row["params"] == {"a": 1}


def test_utc_datetime_round_trips_tz_aware(workspace):
    store = workspace.store
    at = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    store.insert(runs, _run_row(started_at=at))
    [row] = store.select(sa.select(runs))
    assert row["started_at"].tzinfo is not None
    assert row["started_at"] == at
    assert row["ended_at"] is None


def test_non_utc_datetime_keeps_its_instant(workspace):
    """A tz-aware datetime in another zone must come back as the same instant on both backends."""
    store = workspace.store
    at = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    store.insert(runs, _run_row(started_at=at))
    [row] = store.select(sa.select(runs))
    assert row["started_at"] == at  # 10:00 UTC
    assert row["started_at"].astimezone(timezone.utc).hour == 10


def test_insert_returns_autoincrement_key(workspace):
    store = workspace.store
    first = store.insert(alerts, {"kind": "drift", "message": "m", "details": {"x": 1}, "resolved": False,
                                  "at": md.now()})
    second = store.insert(alerts, {"kind": "drift", "message": "m2", "details": [], "resolved": True,
                                   "at": md.now()})
    assert isinstance(first, int)
    assert second > first
    rows = store.select(sa.select(alerts).order_by(alerts.c.id))
    assert [r["details"] for r in rows] == [{"x": 1}, []]
    assert [r["resolved"] for r in rows] == [False, True]


def test_one_raises_not_found_and_lookups(workspace):
    store = workspace.store
    with pytest.raises(NotFound, match="run nope not found"):
        store.one(sa.select(runs).where(runs.c.run_id == "nope"), "run nope")
    with pytest.raises(LookupError):
        store.version(1)
    assert store.production() is None
    assert store.versions() == []
    assert store.batch_by_content("a" * 64) is None
    store.insert(batches, {"batch_id": "b1", "source": "f.csv", "content_sha256": "a" * 64, "rows_total": 3,
                           "rows_accepted": 2, "rows_quarantined": 1, "events_version": 0,
                           "report": {"reasons": {"x": 1}}, "created_at": md.now()})
    found = store.batch_by_content("a" * 64)
    assert found["batch_id"] == "b1" and found["report"] == {"reasons": {"x": 1}}


def test_set_stages_writes_changes_and_audit_entries(workspace):
    store = workspace.store
    _add_version(store, 1, "production")
    _add_version(store, 2, "candidate")
    before = md.now()
    store.set_stages([(1, "production", "archived"), (2, "candidate", "production")], actor="ana", reason="better")
    assert _stages(store) == {1: "archived", 2: "production"}
    assert store.production()["version"] == 2
    history = store.stage_history()
    assert [(e["version"], e["from_stage"], e["to_stage"]) for e in history] == [
        (1, "production", "archived"), (2, "candidate", "production")]
    assert {(e["actor"], e["reason"]) for e in history} == {("ana", "better")}
    for e in history:
        assert e["at"].tzinfo is not None
        assert before - timedelta(seconds=5) <= e["at"] <= md.now() + timedelta(seconds=5)


def test_set_stages_is_atomic_on_database_error(workspace):
    store = workspace.store
    _add_version(store, 1, "production")
    _add_version(store, 2, "candidate")
    # the second change violates NOT NULL on stage/to_stage, after the first one was executed
    with pytest.raises(sa.exc.IntegrityError):
        store.set_stages([(1, "production", "archived"), (2, "candidate", None)], actor="ana", reason="bad")
    assert _stages(store) == {1: "production", 2: "candidate"}
    assert store.stage_history() == []


def test_set_stages_is_atomic_on_python_error(workspace, monkeypatch):
    store = workspace.store
    _add_version(store, 1, "production")
    _add_version(store, 2, "candidate")
    real_now, calls = md.now, []

    def failing_now():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("clock exploded")
        return real_now()

    monkeypatch.setattr(md, "now", failing_now)
    with pytest.raises(RuntimeError, match="clock exploded"):
        store.set_stages([(1, "production", "archived"), (2, "candidate", "production")], actor="a", reason="r")
    assert len(calls) == 2
    monkeypatch.setattr(md, "now", real_now)
    assert _stages(store) == {1: "production", 2: "candidate"}
    assert store.stage_history() == []
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(stage_events)).scalar() == 0


def test_sqlite_runs_in_wal_mode(sqlite_workspace):
    store = sqlite_workspace.store
    assert store.engine.dialect.name == "sqlite"
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
    # WAL is a property of the database file: a plain sqlite3 connection sees it too
    raw = sqlite3.connect(sqlite_workspace.root / "metadata.db")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        raw.close()


def test_postgres_url_uses_psycopg_driver():
    engine = md.make_engine("postgresql://user@127.0.0.1:1/db")
    try:
        assert engine.dialect.name == "postgresql"
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()
