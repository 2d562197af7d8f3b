"""The writer process commits what the in-thread sink commits, and a failure loses nothing."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pytest

from tidal.infra import logwriter
from tidal.infra.lake import Lake
from tidal.infra.logwriter import Chunk, LocalSink, NullableFloats, ProcessSink, WriterFailed
from tidal.serving.logbuffer import LogBuffer

SCHEMA = pa.schema([pa.field("_id", pa.string()), pa.field("_ts", pa.timestamp("us", tz="UTC")),
                    pa.field("x", pa.float64()), pa.field("ok", pa.bool_()), pa.field("n", pa.int64())])
PARIS = ZoneInfo("Europe/Paris")


def _items() -> list:
    now = datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS)  # an instant a zone's wall time cannot name alone
    return [("a", 1_700_000_000_000_001, 1.5, True, 7),  # the server's own times: int microseconds
            ("b", now, None, False, None),
            ("c", datetime(2024, 1, 2, 3, 4, 5, 6), float("nan"), None, 2**40),  # naive: taken as UTC
            Chunk([["d", "e", "f"], [now, datetime(2020, 1, 1), None], np.array([1.0, np.nan, -0.0]),
                   (True, None, False), np.array([1, 2, 3])], 3),
            Chunk([("h", "i"), (5, 6), NullableFloats(np.array([np.nan, 2.5])), (None, True), (0, 1)], 2),
            ("g", datetime(1960, 1, 1, tzinfo=timezone.utc), 1e308, True, -1)]


def _rows(table: pa.Table) -> list[dict]:
    """Rows with NaN as text, so that equal tables compare equal."""
    return [{k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in table.to_pylist()]


def test_the_writer_process_commits_exactly_what_the_in_thread_sink_commits(tmp_path):
    local, remote = Lake(tmp_path / "a"), Lake(tmp_path / "b")
    sink = ProcessSink(remote.root)
    try:
        assert LocalSink(local).write("labels", SCHEMA, _items()) == 9
        assert sink.write("labels", SCHEMA, _items()) == 9
        assert sink.write("labels", SCHEMA, _items()[:2]) == 2  # the schema is sent once per table
    finally:
        sink.close()
    want = _rows(logwriter.to_arrow(SCHEMA, _items()))
    assert [r["x"] for r in want] == [1.5, None, "NaN", 1.0, "NaN", -0.0, None, 2.5, 1e308]  # NaN stays NaN
    # but for a column of NullableFloats, where NaN means missing
    assert _rows(local.read("labels")) == want
    assert _rows(remote.read("labels", version=0)) == want  # one commit per write
    assert remote.version("labels") == 1 and remote.read("labels").num_rows == 11
    assert sink._proc is None


def test_rows_in_several_slabs_keep_their_order(tmp_path, monkeypatch):
    monkeypatch.setattr(logwriter, "ROWS_A_SLAB", 3)
    items = [(f"r{i}", i, float(i), i % 2 == 0, i) for i in range(10)]
    items.insert(4, Chunk([["c0", "c1"], [100, 101], [0.5, 0.25], [True, False], [5, 6]], 2))
    sink = ProcessSink(tmp_path)
    try:
        assert len(sink._frames(items)) == 5  # 3 + 1 rows, the chunk, 3 + 3 rows
        assert sink.write("labels", SCHEMA, items) == 12
    finally:
        sink.close()
    assert [r["_id"] for r in Lake(tmp_path).read("labels").to_pylist()] == \
        ["r0", "r1", "r2", "r3", "c0", "c1", "r4", "r5", "r6", "r7", "r8", "r9"]


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_rows_no_table_can_hold_are_dropped_and_counted_and_the_rest_written(tmp_path, writer, caplog):
    sink = ProcessSink(tmp_path) if writer == "process" else LocalSink(Lake(tmp_path))
    buf = LogBuffer(lake=Lake(tmp_path), table="labels", schema=SCHEMA, capacity=10, sink=sink)
    try:
        buf.append(("a", 1, 1.0, True, 1))
        buf.append(("b", 2, "not a number", True, 2))
        buf.append_columns({"_id": ["c", "d"], "_ts": [3, 4], "x": [1.0, 2**70], "n": [1, 2]}, 2)
        buf.append(("e", 5, 5.0, False, 5))
        with caplog.at_level("WARNING", logger="tidal.serving"):
            assert buf.flush() == 2
        assert "3 row(s)" in caplog.text and buf.dropped == 3 and len(buf) == 0 and buf.written == 2
    finally:
        sink.close()
    assert sorted(Lake(tmp_path).read("labels").column("_id").to_pylist()) == ["a", "e"]
    assert Lake(tmp_path).version("labels") == 0  # one commit


def test_a_failure_that_is_not_the_rows_keeps_them_all(tmp_path, monkeypatch):
    sink = ProcessSink(tmp_path)
    buf = LogBuffer(lake=Lake(tmp_path), table="labels", schema=SCHEMA, capacity=10, sink=sink)
    try:
        buf.append(("a", 1, 1.0, True, 1))
        real = sink.write
        monkeypatch.setattr(sink, "write", lambda *a: (_ for _ in ()).throw(WriterFailed("disk full")))
        with pytest.raises(WriterFailed, match="disk full"):
            buf.flush()
        assert len(buf) == 1 and buf.dropped == 0 and Lake(tmp_path).read("labels") is None
        monkeypatch.setattr(sink, "write", real)
        assert buf.flush() == 1
    finally:
        sink.close()


def test_a_dead_writer_process_is_replaced_and_nothing_is_lost(tmp_path):
    sink = ProcessSink(tmp_path)
    buf = LogBuffer(lake=Lake(tmp_path), table="labels", schema=SCHEMA, capacity=10, sink=sink)
    try:
        buf.append(("a", 1, 1.0, True, 1))
        assert buf.flush() == 1
        first = sink._proc
        first.kill()
        first.wait()
        buf.append(("b", 2, 2.0, False, 2))
        assert buf.flush() == 1  # restarted, and the schema sent again
        assert sink._proc is not first and sink._proc.poll() is None
    finally:
        sink.close()
    assert sorted(Lake(tmp_path).read("labels").column("_id").to_pylist()) == ["a", "b"]


def test_a_writer_process_that_cannot_start_leaves_the_batch_to_this_process(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(logwriter.sys, "executable", str(tmp_path / "no-such-python"))
    sink = ProcessSink(tmp_path)
    buf = LogBuffer(lake=Lake(tmp_path), table="labels", schema=SCHEMA, capacity=10, sink=sink)
    buf.append(("a", 1, 1.0, True, 1))
    with caplog.at_level("WARNING", logger="tidal.serving"):
        assert buf.flush() == 1
    assert "failed twice" in caplog.text and sink._proc is None
    starts = []
    monkeypatch.setattr(logwriter.subprocess, "Popen", lambda *a, **k: starts.append(a) or 1 / 0)
    buf.append(("b", 2, 2.0, True, 2))
    assert buf.flush() == 1 and not starts  # for a while, no new attempt: written here at once
    monkeypatch.setattr(sink, "_local_until", 0.0)
    buf.append(("c", 3, 3.0, True, 3))
    with pytest.raises(ZeroDivisionError):  # the while is over: the process is tried again
        buf.flush()
    assert len(starts) == 1 and len(buf) == 1
    assert sorted(Lake(tmp_path).read("labels").column("_id").to_pylist()) == ["a", "b"]
    sink.close()


def test_a_value_msgpack_cannot_carry_meets_the_same_rules_as_in_this_process(tmp_path, caplog):
    too_big = [("a", 1, 2**70, True, 1)]  # msgpack cannot carry the int; pyarrow refuses it too
    with pytest.raises(pa.ArrowInvalid) as local:
        LocalSink(Lake(tmp_path / "a")).write("labels", SCHEMA, too_big)
    sink = ProcessSink(tmp_path / "b")
    try:
        with caplog.at_level("WARNING", logger="tidal.serving"), pytest.raises(pa.ArrowInvalid) as remote:
            sink.write("labels", SCHEMA, too_big)
        assert str(remote.value) == str(local.value) and "cannot be sent to the log writer" in caplog.text
        assert Lake(tmp_path / "b").read("labels") is None
        assert sink.write("labels", SCHEMA, [("b", 1, np.float32(2.5), True, 1)]) == 1  # NumPy scalars travel
    finally:
        sink.close()
    assert Lake(tmp_path / "b").read("labels").column("x").to_pylist() == [2.5]


def test_a_hung_writer_process_is_killed_and_the_batch_written_here(tmp_path, monkeypatch, caplog):
    import subprocess
    import sys

    popen = subprocess.Popen
    hung = [sys.executable, "-c", "import sys, time\nsys.stdin.buffer.read(1)\ntime.sleep(60)"]
    monkeypatch.setattr(logwriter.subprocess, "Popen", lambda args, **kw: popen(hung, **kw))
    sink = ProcessSink(tmp_path)
    sink.answer_timeout_s = 0.5
    buf = LogBuffer(lake=Lake(tmp_path), table="labels", schema=SCHEMA, capacity=10, sink=sink)
    buf.append(("a", 1, 1.0, True, 1))
    with caplog.at_level("WARNING", logger="tidal.serving"):
        assert buf.flush() == 1
    assert "TimeoutError" in caplog.text and sink._proc is None
    assert Lake(tmp_path).read("labels").column("_id").to_pylist() == ["a"]


def test_a_batch_committed_by_a_writer_that_died_before_answering_is_not_committed_again(tmp_path, monkeypatch,
                                                                                         caplog):
    import subprocess
    import sys

    # the first writer process commits the batch, then dies instead of answering; the next one answers
    marker = tmp_path / "died-once"
    dies_after_commit = [sys.executable, "-c", (
        "import os, sys, pathlib\n"
        "from tidal.infra import logwriter\n"
        "marker, send = pathlib.Path(sys.argv[2]), logwriter._send\n"
        "def send_or_die(stream, payload):\n"
        "    if not marker.exists():\n"
        "        marker.touch()\n"
        "        os._exit(1)\n"
        "    send(stream, payload)\n"
        "logwriter._send = send_or_die\n"
        "logwriter.serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)\n"), str(tmp_path / "lake"), str(marker)]
    popen = subprocess.Popen
    monkeypatch.setattr(logwriter.subprocess, "Popen", lambda args, **kw: popen(dies_after_commit, **kw))
    sink = ProcessSink(tmp_path / "lake")
    buf = LogBuffer(lake=Lake(tmp_path / "lake"), table="labels", schema=SCHEMA, capacity=10, sink=sink)
    try:
        buf.append(("a", 1, 1.0, True, 1))
        buf.append_columns({"_id": ["b", "c"], "_ts": [2, 3], "x": [2.0, 3.0], "n": [2, 3]}, 2)
        assert buf.flush() == 3  # resent to a new writer, which finds it committed
        assert marker.exists() and len(buf) == 0 and buf.written == 3
        buf.append(("d", 4, 4.0, True, 4))
        assert buf.flush() == 1  # the next batch: written as usual
    finally:
        sink.close()
    lake = Lake(tmp_path / "lake")
    assert sorted(lake.read("labels").column("_id").to_pylist()) == ["a", "b", "c", "d"]  # each once
    assert lake.version("labels") == 1


def test_a_resent_batch_the_table_does_not_hold_is_written(tmp_path):
    sink = LocalSink(Lake(tmp_path))
    assert sink.write("labels", SCHEMA, [("a", 1, 1.0, True, 1)], txn=("server-1", 1)) == 1
    assert sink.write("labels", SCHEMA, [("a", 1, 1.0, True, 1)], txn=("server-1", 1), resent=True) == 1
    assert sink.write("labels", SCHEMA, [("b", 2, 2.0, True, 2)], txn=("server-1", 2), resent=True) == 1
    assert sink.write("labels", SCHEMA, [("c", 3, 3.0, True, 3)], txn=("server-2", 1), resent=True) == 1
    assert sorted(Lake(tmp_path).read("labels").column("_id").to_pylist()) == ["a", "b", "c"]


def test_log_files_skip_dictionaries_for_floats_and_ids_only(tmp_path):
    import pyarrow.parquet as pq

    items = [(f"id{i}", i, i / 7, i % 2 == 0, i % 3) for i in range(1000)]
    assert LocalSink(Lake(tmp_path)).write("labels", SCHEMA, items) == 1000
    files = list((tmp_path / "labels").glob("*.parquet"))
    assert len(files) == 1
    meta = pq.ParquetFile(files[0]).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}
    dictionary = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    assert not encodings["x"] & dictionary and not encodings["_id"] & dictionary
    assert encodings["n"] & dictionary  # repeating values keep theirs
    assert Lake(tmp_path).read("labels").column("x").to_pylist() == [i / 7 for i in range(1000)]
