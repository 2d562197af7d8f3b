"""The lake: versioned Delta tables, time travel, commit metadata."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from tidal.infra.lake import TABLES, Lake


def _batch(ids, tag):
    return pa.table({"id": pa.array(ids, pa.int64()), "tag": pa.array([tag] * len(ids), pa.string()),
                     "x": pa.array([i / 10 for i in ids], pa.float64())})


def _rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


@pytest.fixture
def lake(tmp_path):
    return Lake(tmp_path / "lake")


def test_append_returns_increasing_versions(lake):
    assert lake.version("events") is None
    assert not lake.exists("events")
    versions = [lake.append("events", _batch([i * 10, i * 10 + 1], f"b{i}")) for i in range(3)]
    assert versions == [0, 1, 2]
    assert lake.exists("events")
    assert lake.version("events") == 2
    assert lake.versions() == {"events": 2, "quarantine": None, "predictions": None, "labels": None}


def test_tables_are_independent(lake):
    assert lake.append("events", _batch([1], "e")) == 0
    assert lake.append("labels", _batch([2], "l")) == 0
    assert lake.append("events", _batch([3], "e")) == 1
    assert [r["id"] for r in _rows(lake.read("labels"))] == [2]


def test_read_old_version_returns_old_rows_exactly(lake):
    first, second = _batch([1, 2, 3], "first"), _batch([4, 5], "second")
    lake.append("events", first)
    lake.append("events", second)
    assert _rows(lake.read("events", version=0)) == _rows(first)
    assert _rows(lake.read("events", version=1)) == _rows(first) + _rows(second)
    assert _rows(lake.read("events")) == _rows(first) + _rows(second)
    # a later append does not change what an old version holds
    lake.append("events", _batch([6], "third"))
    assert _rows(lake.read("events", version=0)) == _rows(first)
    assert lake.read("events", version=1).num_rows == 5


def test_read_selected_columns(lake):
    lake.append("events", _batch([1, 2], "t"))
    table = lake.read("events", columns=["id"])
    assert table.column_names == ["id"]
    assert sorted(table.column("id").to_pylist()) == [1, 2]


def test_read_missing_table_is_none(lake):
    for name in TABLES:
        assert lake.read(name) is None
        assert lake.read(name, version=0) is None


@pytest.mark.parametrize("op", ["path", "read", "version", "exists", "append"])
def test_unknown_table_raises_value_error(lake, op):
    calls = {"path": lambda: lake.path("nope"), "read": lambda: lake.read("nope"),
             "version": lambda: lake.version("nope"), "exists": lambda: lake.exists("nope"),
             "append": lambda: lake.append("nope", _batch([1], "x"))}
    with pytest.raises(ValueError, match="unknown lake table 'nope'"):
        calls[op]()
    assert not (lake.root / "nope").exists()


def test_custom_commit_metadata_is_recorded(lake):
    lake.append("events", _batch([1], "a"), commit_info={"tidal.batch_id": "b-1", "tidal.source": "x.csv"})
    lake.append("events", _batch([2], "b"))
    lake.append("events", _batch([3], "c"), commit_info={"tidal.batch_id": "b-3"})
    history = {h["version"]: h for h in DeltaTable(lake.path("events")).history()}
    assert history[0]["tidal.batch_id"] == "b-1"
    assert history[0]["tidal.source"] == "x.csv"
    assert "tidal.batch_id" not in history[1]
    assert history[2]["tidal.batch_id"] == "b-3"


def test_append_merges_a_new_column(lake):
    lake.append("events", _batch([1], "a"))
    extra = _batch([2], "b").append_column("new", pa.array(["n"], pa.string()))
    assert lake.append("events", extra) == 1
    rows = _rows(lake.read("events"))
    assert [r["new"] for r in rows] == [None, "n"]
    assert lake.read("events", version=0).column_names == ["id", "tag", "x"]


def test_a_table_writer_opens_its_table_afresh_every_so_many_commits(lake, monkeypatch):
    from tidal.infra import lake as lake_module

    monkeypatch.setattr(lake_module, "REOPEN_EVERY", 3)
    writer = lake.writer("events", log=True)
    tables, versions = [], []
    for i in range(7):
        versions.append(writer.append(_batch([i], "t")))
        tables.append(writer._table)
    assert versions == list(range(7))
    # one open table for three commits, then a fresh one (None until the next commit opens it)
    assert tables[0] is tables[1] is not None and tables[2] is None and tables[3] is tables[4] is not None
    assert tables[5] is None and tables[6] is not None and tables[6] is not tables[3]
    assert [r["id"] for r in _rows(lake.read("events"))] == list(range(7))
