"""The SQL source against a real PostgreSQL: incremental by watermark, nothing twice, ties kept together."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import polars as pl
import pytest
import sqlalchemy as sa

from tests.conftest import drop_postgres, postgres_url
from tidal.data.ingest import ingest_frame
from tidal.data.ingester import ingest_once, open_sources
from tidal.data.sources.sql import decode_watermark, encode_watermark
from tidal.infra.metadata import make_engine
from tidal.infra.workspace import Workspace
from tidal.spec import parse_spec

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def pg():
    url = postgres_url()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE accounts (id integer PRIMARY KEY, amount double precision, "
                             "kind text, label text, version integer, updated_at timestamptz)"))
    yield url, engine
    engine.dispose()
    drop_postgres(url)


def insert(engine: sa.Engine, ids: range, *, version=lambda i: i, updated=lambda i: T0 + timedelta(minutes=i)) -> None:
    rows = [{"id": i, "amount": i * 1.5, "kind": "ab"[i % 2], "label": str(i % 2), "version": version(i),
             "updated_at": updated(i)} for i in ids]
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts VALUES (:id, :amount, :kind, :label, :version, :updated_at)"), rows)


def make_spec(url: str, **source):
    return parse_spec({
        "name": "accounts", "task": "binary", "target": "label", "entity_key": "id",
        "features": {"amount": {"type": "numeric"}, "kind": {"type": "categorical"}},
        "sources": [{"kind": "sql", "name": "accounts", "url": url, **source}]})


def events(ws: Workspace) -> pl.DataFrame:
    return pl.from_arrow(ws.lake.read("events"))


def test_first_pass_takes_everything_then_only_new_rows(pg, sqlite_workspace, tmp_path):
    url, engine = pg
    insert(engine, range(25))
    spec = make_spec(url, query="accounts", watermark="updated_at", max_rows=10)
    sources = open_sources(spec, tmp_path)
    reports = ingest_once(sqlite_workspace, spec, sources)
    assert [r.rows_accepted for r in reports] == [10, 10, 5]
    assert ingest_once(sqlite_workspace, spec, sources) == []  # nothing new
    state = sqlite_workspace.store.source_state("accounts")
    assert state["watermark"]["type"] == "datetime"
    assert decode_watermark(state["watermark"]) == T0 + timedelta(minutes=24)

    insert(engine, range(25, 32))
    (report,) = ingest_once(sqlite_workspace, spec, sources)
    assert report.rows_accepted == 7 and not report.already_ingested
    got = events(sqlite_workspace)
    assert sorted(got["id"].cast(int).to_list()) == list(range(32))  # every row exactly once
    assert got["_batch_id"].n_unique() == 4
    for s in sources:
        s.close()


def test_ties_at_the_batch_boundary_stay_together(pg, sqlite_workspace, tmp_path):
    url, engine = pg
    # versions: 0, 1, 2, 2, 2, 2, 3, then six rows at 4 (more than max_rows), then 5
    versions = [0, 1, 2, 2, 2, 2, 3, 4, 4, 4, 4, 4, 4, 5]
    insert(engine, range(len(versions)), version=lambda i: versions[i])
    spec = make_spec(url, query="SELECT id, amount, kind, label, version FROM accounts WHERE id >= 0",
                     watermark="version", max_rows=4)
    sources = open_sources(spec, tmp_path)
    reports = ingest_once(sqlite_workspace, spec, sources)
    assert [r.rows_total for r in reports] == [2, 4, 1, 6, 1]
    got = events(sqlite_workspace).with_columns(pl.col("id").cast(int))
    assert sorted(got["id"].to_list()) == list(range(len(versions)))
    got = got.with_columns(pl.col("id").map_elements(lambda i: versions[i], return_dtype=pl.Int64).alias("version"))
    per_version = got.group_by("version").agg(pl.col("_batch_id").n_unique().alias("batches"))
    assert per_version["batches"].to_list() == [1] * per_version.height  # no watermark value split
    assert sqlite_workspace.store.source_state("accounts")["watermark"] == {"type": "int", "value": 5}


def test_restart_resumes_and_a_replayed_batch_is_not_applied_twice(pg, tmp_path):
    url, engine = pg
    insert(engine, range(12))
    spec = make_spec(url, query="accounts", watermark="id", max_rows=5)
    root = tmp_path / "ws"

    ws = Workspace(root).create()
    (source,) = open_sources(spec, tmp_path)
    assert len(ingest_once(ws, spec, [source])) == 3
    # a crash after the lake commit but before the watermark was saved
    insert(engine, range(12, 20))
    batch = next(source.read(ws.store.source_state("accounts")))
    ingest_frame(ws, spec, batch.frame, batch_id=batch.batch_id, source=source.name,
                 content_sha256=batch.content_sha256)
    source.close()
    ws.close()

    ws = Workspace(root).create()  # the restarted process
    (source,) = open_sources(spec, tmp_path)
    reports = ingest_once(ws, spec, [source])
    assert [(r.rows_total, r.already_ingested) for r in reports] == [(5, True), (3, False)]
    got = events(ws)
    assert sorted(got["id"].cast(int).to_list()) == list(range(20))
    assert ws.store.source_state("accounts")["watermark"] == {"type": "int", "value": 19}
    source.close()
    ws.close()


@pytest.mark.parametrize("value", [7, 2.5, Decimal("10.25"), date(2024, 2, 29), T0, datetime(2024, 5, 1, 12, 30),
                                   "2024-01-01"])
def test_watermarks_round_trip_through_json(value):
    import json

    saved = json.loads(json.dumps(encode_watermark(value)))
    back = decode_watermark(saved)
    assert back == value and type(back) is type(value)


def test_uuid_and_json_columns_become_text_and_a_date_watermark_works(pg, sqlite_workspace, tmp_path):
    url, engine = pg
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (ref uuid, amount numeric(8, 2), kind text, label text, "
                             "extra jsonb, day date)"))
        conn.execute(sa.text("INSERT INTO orders SELECT gen_random_uuid(), i * 1.25, 'a', '1', "
                             "jsonb_build_object('i', i), DATE '2024-01-01' + i / 3 FROM generate_series(1, 9) i"))
    spec = parse_spec({
        "name": "orders", "task": "binary", "target": "label", "entity_key": "ref",
        "features": {"amount": {"type": "numeric"}, "kind": {"type": "categorical"}},
        "sources": [{"kind": "sql", "url": url, "watermark": "day", "max_rows": 4,
                     "query": "WITH o AS (SELECT * FROM orders) SELECT * FROM o"}]})
    (source,) = open_sources(spec, tmp_path)
    assert source.name.startswith("sql:")
    reports = ingest_once(sqlite_workspace, spec, [source])
    assert [r.rows_accepted for r in reports] == [2, 3, 4]  # rows per day: 2, 3, 3, 1; max_rows 4
    got = events(sqlite_workspace)
    assert got["ref"].dtype == pl.String and got["ref"].n_unique() == 9
    assert got["amount"].sum() == pytest.approx(1.25 * 45)
    assert sqlite_workspace.store.source_state(source.name)["watermark"] == {"type": "date", "value": "2024-01-04"}
    source.close()
