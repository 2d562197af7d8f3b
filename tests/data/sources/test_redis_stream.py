"""The Redis Stream source against a real Redis: acknowledged only after commit, replayed after a crash."""

from __future__ import annotations

import polars as pl
import pytest

from tests.conftest import CHURN_SPEC
from tests.data.sources.conftest import REDIS_URL, telco_messages
from tidal.data.ingest import ingest_frame
from tidal.data.ingester import ingest_once, open_sources
from tidal.infra.workspace import Workspace
from tidal.spec import parse_spec


def make_spec(stream: str, **options):
    source = {"kind": "redis_stream", "url": REDIS_URL, "stream": stream, "batch_size": 50, "block_ms": 0, **options}
    return parse_spec({**CHURN_SPEC, "sources": [source]})


def fill(client, key: str, messages: list[dict[str, str]]) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for m in messages:
        pipe.xadd(key, m)
    return pipe.execute()


def pending(client, key: str) -> int:
    return client.xpending(key, "tidal")["pending"]


def customer_ids(ws: Workspace) -> list[str]:
    return pl.from_arrow(ws.lake.read("events", columns=["customerID"]))["customerID"].to_list()


def test_messages_are_ingested_and_acknowledged_only_after_commit(redis_stream, sqlite_workspace, tmp_path):
    client, key = redis_stream
    messages = telco_messages(120)
    fill(client, key, messages)
    spec = make_spec(key)
    (source,) = open_sources(spec, tmp_path)
    assert source.name == f"redis:{key}"

    state = sqlite_workspace.store.source_state(source.name)
    batch = next(source.read(state))
    assert batch.frame.height == 50 and batch.frame.columns == list(messages[0])
    assert batch.frame["customerID"].to_list() == [m["customerID"] for m in messages[:50]]
    assert pending(client, key) == 50  # read, not acknowledged
    ingest_frame(sqlite_workspace, spec, batch.frame, batch_id=batch.batch_id, source=source.name,
                 content_sha256=batch.content_sha256)
    assert pending(client, key) == 50  # landed, still not acknowledged
    source.commit(batch, state)
    assert pending(client, key) == 0

    reports = ingest_once(sqlite_workspace, spec, [source])
    assert [r.rows_accepted for r in reports] == [50, 20]
    assert pending(client, key) == 0
    assert sorted(customer_ids(sqlite_workspace)) == sorted(m["customerID"] for m in messages)
    assert ingest_once(sqlite_workspace, spec, [source]) == []
    source.close()


def test_a_crash_before_the_acknowledgement_replays_the_batch_once(redis_stream, tmp_path):
    client, key = redis_stream
    messages = telco_messages(130)
    fill(client, key, messages)
    spec = make_spec(key)
    root = tmp_path / "ws"

    ws = Workspace(root).create()
    (source,) = open_sources(spec, tmp_path)
    assert len(ingest_once(ws, spec, [source])) == 3  # 50 + 50 + 30
    fill(client, key, telco_messages(80, offset=130))
    # the crash: the batch lands in the lake, then the process dies before XACK
    batch = next(source.read(ws.store.source_state(source.name)))
    ingest_frame(ws, spec, batch.frame, batch_id=batch.batch_id, source=source.name,
                 content_sha256=batch.content_sha256)
    source.close()
    ws.close()
    assert pending(client, key) == 50

    ws = Workspace(root).create()  # the restarted process re-reads its pending messages first
    (source,) = open_sources(spec, tmp_path)
    reports = ingest_once(ws, spec, [source])
    assert [(r.batch_id, r.already_ingested) for r in reports][0] == (batch.batch_id, True)
    assert [r.rows_total for r in reports] == [50, 30]
    ids = customer_ids(ws)
    assert len(ids) == len(set(ids)) == 210  # each message's row exactly once
    assert pending(client, key) == 0
    source.close()
    ws.close()


def test_a_read_but_never_ingested_batch_is_ingested_on_restart(redis_stream, sqlite_workspace, tmp_path):
    client, key = redis_stream
    fill(client, key, telco_messages(30))
    spec = make_spec(key, consumer="worker-1")
    (source,) = open_sources(spec, tmp_path)
    next(source.read({}))  # read, then the process dies
    source.close()
    (source,) = open_sources(spec, tmp_path)
    (report,) = ingest_once(sqlite_workspace, spec, [source])
    assert (report.rows_accepted, report.already_ingested) == (30, False)
    assert client.xpending(key, "tidal")["pending"] == 0
    source.close()


def test_uneven_messages_become_nullable_text_columns_and_reads_wait_block_ms(redis_stream, sqlite_workspace,
                                                                             tmp_path):
    import time

    client, key = redis_stream
    full, short = telco_messages(2)
    del short["TotalCharges"]
    fill(client, key, [full, short])
    (source,) = open_sources(make_spec(key, block_ms=150), tmp_path)
    (batch,) = list(source.read({}))
    assert batch.frame.schema["TotalCharges"] == pl.String
    assert batch.frame["TotalCharges"].to_list() == [full["TotalCharges"], None]
    source.commit(batch, {})
    started = time.perf_counter()
    assert list(source.read({})) == []  # nothing pending, nothing new: one read that waits block_ms
    source.close()
    assert time.perf_counter() - started >= 0.1


@pytest.mark.parametrize("existing", [False, True])
def test_the_group_is_created_once(redis_stream, tmp_path, existing):
    client, key = redis_stream
    if existing:
        client.xgroup_create(key, "tidal", id="0", mkstream=True)
    (source,) = open_sources(make_spec(key), tmp_path)
    assert list(source.read({})) == []
    assert [g["name"] for g in client.xinfo_groups(key)] == [b"tidal"]
    source.close()
