"""Ingestion into the lake: one commit per table per batch, idempotent, and repairable after a crash."""

from __future__ import annotations

import json

import polars as pl
import pytest
import sqlalchemy as sa

from tidal.data.ingest import ingest_file, ingest_frame
from tidal.errors import DataValidationError
from tidal.infra.lake import Lake
from tidal.infra.metadata import batches

CORRUPT = {  # row -> (column, bad value, reason fragment)
    5: ("tenure", "abc", "tenure: abc is not a valid numeric"),
    17: ("MonthlyCharges", "12,50", "MonthlyCharges: 12,50 is not a valid numeric"),
    42: ("SeniorCitizen", "maybe", "SeniorCitizen: maybe is not a valid boolean"),
    99: ("Contract", "Weekly", "Contract: Weekly is not an allowed value"),
}


def _batches(ws) -> list[dict]:
    return ws.store.select(sa.select(batches))


def _corrupted(telco_df: pl.DataFrame, n: int = 200) -> pl.DataFrame:
    df = telco_df.head(n)
    for row, (column, value, _) in CORRUPT.items():
        values = df[column].to_list()
        values[row] = value
        df = df.with_columns(pl.Series(column, values, dtype=pl.String))
    return df


@pytest.fixture
def corrupted_csv(telco_df, tmp_path):
    path = tmp_path / "corrupted.csv"
    _corrupted(telco_df).write_csv(path)
    return path


def test_ingest_full_file_lands_in_one_commit(workspace, churn_spec, telco_csv):
    assert workspace.lake.version("events") is None
    report = ingest_file(workspace, churn_spec, telco_csv)
    assert not report.already_ingested
    assert report.rows_total == report.rows_accepted == 7043
    assert report.rows_quarantined == 0
    assert workspace.lake.version("events") == 0 == report.events_version
    assert workspace.lake.version("quarantine") is None  # nothing quarantined, no commit
    events = workspace.lake.read("events")
    assert events.num_rows == 7043
    assert set(events.column("_batch_id").to_pylist()) == {report.batch_id}
    assert events.column("customerID").to_pylist()[:2] == ["7590-VHVEG", "5575-GNVDE"]
    # extra columns of the file are not stored
    assert "Dependents" not in events.column_names and "Dependents" in report.dropped_columns
    (row,) = _batches(workspace)
    assert row["batch_id"] == report.batch_id
    assert row["rows_accepted"] == 7043 and row["events_version"] == 0
    assert row["source"] == str(telco_csv)


def test_corrupted_cells_quarantine_exactly_those_rows(workspace, churn_spec, corrupted_csv, telco_df):
    report = ingest_file(workspace, churn_spec, corrupted_csv)
    assert report.rows_total == 200
    assert report.rows_quarantined == len(CORRUPT)
    assert report.rows_accepted == 200 - len(CORRUPT)
    assert report.reasons == {"tenure": 1, "MonthlyCharges": 1, "SeniorCitizen": 1, "Contract": 1}
    assert workspace.lake.version("events") == 0
    assert workspace.lake.version("quarantine") == 0

    events = workspace.lake.read("events")
    assert events.num_rows == 200 - len(CORRUPT)
    bad_ids = {telco_df["customerID"][r] for r in CORRUPT}
    assert not bad_ids & set(events.column("customerID").to_pylist())
    assert sorted(events.column("_row").to_pylist()) == [r for r in range(200) if r not in CORRUPT]

    quarantine = workspace.lake.read("quarantine").to_pylist()
    assert sorted(q["_row"] for q in quarantine) == sorted(CORRUPT)
    for q in quarantine:
        column, value, reason = CORRUPT[q["_row"]]
        assert q["reasons"] == reason
        assert q["_batch_id"] == report.batch_id
        record = json.loads(q["record"])
        assert record[column] == value  # the raw record, exactly as received
        assert record["customerID"] == telco_df["customerID"][q["_row"]]
    meta = _batches(workspace)[0]
    assert meta["rows_quarantined"] == 4 and meta["report"]["reasons"] == report.reasons


def test_reingesting_same_file_is_a_noop(workspace, churn_spec, corrupted_csv, tmp_path):
    first = ingest_file(workspace, churn_spec, corrupted_csv)
    versions = workspace.lake.versions()
    again = ingest_file(workspace, churn_spec, corrupted_csv)
    assert again.already_ingested
    assert again.batch_id == first.batch_id
    assert (again.rows_accepted, again.rows_quarantined) == (first.rows_accepted, first.rows_quarantined)
    assert again.reasons == first.reasons
    assert workspace.lake.versions() == versions
    assert workspace.lake.read("events").num_rows == first.rows_accepted
    assert workspace.lake.read("quarantine").num_rows == first.rows_quarantined
    assert len(_batches(workspace)) == 1
    # the same content under another name is the same batch
    copy = tmp_path / "copy.csv"
    copy.write_bytes(corrupted_csv.read_bytes())
    assert ingest_file(workspace, churn_spec, copy).already_ingested
    assert workspace.lake.versions() == versions


def test_two_batches_make_two_commits(workspace, churn_spec, telco_df, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    telco_df.head(100).write_csv(a)
    telco_df.slice(100, 50).write_csv(b)
    ra = ingest_file(workspace, churn_spec, a)
    rb = ingest_file(workspace, churn_spec, b)
    assert ra.batch_id != rb.batch_id
    assert (ra.events_version, rb.events_version) == (0, 1)
    assert workspace.lake.read("events").num_rows == 150
    assert workspace.lake.read("events", version=0).num_rows == 100  # the earlier version is kept
    assert len(_batches(workspace)) == 2


def test_batch_missing_required_column_changes_nothing(workspace, churn_spec, telco_df, telco_csv, tmp_path):
    ingest_file(workspace, churn_spec, telco_csv)
    versions = workspace.lake.versions()
    before = _batches(workspace)
    path = tmp_path / "no_tenure.csv"
    telco_df.head(50).drop("tenure").write_csv(path)
    with pytest.raises(DataValidationError) as err:
        ingest_file(workspace, churn_spec, path)
    assert [p.location for p in err.value.problems] == ["tenure"]
    assert workspace.lake.versions() == versions
    assert workspace.lake.read("events").num_rows == 7043
    assert _batches(workspace) == before


def test_rejected_batch_on_empty_workspace_creates_no_tables(workspace, churn_spec, telco_df, tmp_path):
    path = tmp_path / "no_target.csv"
    telco_df.head(50).drop("Churn").write_csv(path)
    with pytest.raises(DataValidationError, match="Churn"):
        ingest_file(workspace, churn_spec, path)
    assert workspace.lake.versions() == {t: None for t in workspace.lake.versions()}
    assert _batches(workspace) == []


def test_crash_after_commits_before_metadata_is_repaired_without_duplicates(
        workspace, churn_spec, corrupted_csv):
    first = ingest_file(workspace, churn_spec, corrupted_csv)
    versions = workspace.lake.versions()
    # simulate a crash: both lake commits landed, the metadata row did not
    with workspace.store.engine.begin() as conn:
        conn.execute(batches.delete().where(batches.c.batch_id == first.batch_id))
    assert _batches(workspace) == []

    repaired = ingest_file(workspace, churn_spec, corrupted_csv)
    assert not repaired.already_ingested
    assert repaired.batch_id == first.batch_id
    assert workspace.lake.versions() == versions  # no new commits
    assert workspace.lake.read("events").num_rows == first.rows_accepted
    assert workspace.lake.read("quarantine").num_rows == first.rows_quarantined
    (row,) = _batches(workspace)
    assert row["batch_id"] == first.batch_id
    assert row["events_version"] == versions["events"]
    # and from now on it is a plain no-op
    assert ingest_file(workspace, churn_spec, corrupted_csv).already_ingested


def test_crash_between_events_and_quarantine_commits_writes_only_the_missing_one(
        workspace, churn_spec, telco_df, monkeypatch):
    frame = _corrupted(telco_df, 120)
    kwargs = dict(batch_id="b-crash", source="test", content_sha256="c" * 64)
    real_append = Lake.append

    def crash_on_quarantine(self, table, data, **kw):
        if table == "quarantine":
            raise KeyboardInterrupt("simulated crash")
        return real_append(self, table, data, **kw)

    monkeypatch.setattr(Lake, "append", crash_on_quarantine)
    with pytest.raises(KeyboardInterrupt):
        ingest_frame(workspace, churn_spec, frame, **kwargs)
    assert workspace.lake.read("events").num_rows == 116
    assert workspace.lake.version("quarantine") is None
    assert _batches(workspace) == []

    monkeypatch.setattr(Lake, "append", real_append)
    report = ingest_frame(workspace, churn_spec, frame, **kwargs)
    assert (report.rows_accepted, report.rows_quarantined) == (116, 4)
    assert workspace.lake.version("events") == 0  # not written twice
    assert workspace.lake.read("events").num_rows == 116
    assert workspace.lake.read("quarantine").num_rows == 4
    assert len(_batches(workspace)) == 1


def test_ingest_frame_all_rows_quarantined(workspace, churn_spec, telco_df):
    frame = telco_df.head(10).with_columns(pl.lit("nope").alias("tenure"))
    report = ingest_frame(workspace, churn_spec, frame, batch_id="b-bad", source="test", content_sha256="a" * 64)
    assert (report.rows_accepted, report.rows_quarantined) == (0, 10)
    assert report.events_version is None
    assert workspace.lake.version("events") is None
    assert workspace.lake.read("quarantine").num_rows == 10
    assert report.reasons == {"tenure": 10}


def test_missing_file_is_a_clear_error(workspace, churn_spec, tmp_path):
    with pytest.raises(DataValidationError, match="file not found"):
        ingest_file(workspace, churn_spec, tmp_path / "absent.csv")
    assert _batches(workspace) == []
