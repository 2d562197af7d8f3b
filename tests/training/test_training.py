"""Training and evaluation on SQLite and PostgreSQL: lineage, reproducible evaluation, the cost rule,
training sets from exact lake versions, and time-aware splits."""

from __future__ import annotations

import re
from pathlib import Path
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from tidal.data.ingest import ingest_file, ingest_frame
from tidal.errors import StateError
from tidal.registry.registry import Registry
from tidal.spec import parse_spec
from tidal.training.dataset import labels_array, split_rows, training_table
from tidal.training.runs import RunTracker
from tidal.training.trainer import evaluate, train

ROUNDS = 40


def _small(spec, **training):
    return spec.model_copy(update={"training": spec.training.model_copy(
        update={"num_boost_round": ROUNDS, **training})})


@pytest.fixture
def spec(churn_spec):
    return _small(churn_spec)


@pytest.fixture
def trained(workspace, spec, telco_csv):
    ingest_file(workspace, spec, telco_csv)
    return train(workspace, spec, actor="tester")


def test_run_is_recorded_with_its_lineage(workspace, spec, trained):
    run = RunTracker(workspace).get(trained.run_id)
    assert run["status"] == "finished"
    assert run["kind"] == "train"
    assert run["data_versions"] == {"events": 0} == trained.data_versions
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|tidal-.+", run["code_version"])
    assert run["spec_sha256"] == spec.digest()
    assert run["params"]["training"]["num_boost_round"] == ROUNDS
    assert run["params"]["lightgbm"]["objective"] == "binary"
    assert run["metrics"]["test"] == trained.metrics["test"]
    assert run["metrics"]["data_rows"] == 7043
    assert run["artifact"] == trained.bundle_path
    assert run["started_at"].tzinfo is not None
    assert run["started_at"] <= run["ended_at"]
    row = Registry(workspace).resolve(trained.version)
    assert row["run_id"] == trained.run_id and row["stage"] == "candidate"
    assert row["metrics"] == trained.metrics["test"]
    assert Registry(workspace).history()[-1]["actor"] == "tester"


def test_failed_training_is_recorded_as_failed(workspace, spec, telco_csv):
    ingest_file(workspace, spec, telco_csv)
    wrong = spec.model_copy(update={"positive_class": "Maybe"})
    with pytest.raises(StateError, match="only one class"):
        train(workspace, wrong)
    [run] = RunTracker(workspace).list()
    assert run["status"] == "failed"
    assert run["ended_at"] is not None
    assert Registry(workspace).list() == []


def test_training_without_data_is_refused(workspace, spec):
    with pytest.raises(StateError, match="no accepted data"):
        train(workspace, spec)
    assert RunTracker(workspace).list() == []


def test_evaluate_reproduces_the_held_out_metrics_exactly(workspace, spec, trained):
    again = evaluate(workspace, spec, trained.version)
    assert again["version"] == trained.version and again["run_id"] == trained.run_id
    assert again["split"] == "stratified" == trained.metrics["split"]
    assert again["test"] == trained.metrics["test"]  # every number, bit for bit
    assert evaluate(workspace, spec, "latest")["test"] == trained.metrics["test"]


def test_evaluate_still_reproduces_after_later_ingestion(workspace, spec, trained, telco_df):
    extra = telco_df.head(500).with_columns(pl.col("customerID") + "-new")
    ingest_frame(workspace, spec, extra, batch_id="b-extra", source="extra", content_sha256="e" * 64)
    assert workspace.lake.version("events") == 1
    assert evaluate(workspace, spec, trained.version)["test"] == trained.metrics["test"]


def test_evaluate_uses_the_runs_recorded_split_settings(workspace, spec, trained):
    """A later edit of the spec's split settings must not change which rows are the version's held-out set."""
    edited = _small(spec, seed=spec.training.seed + 1)
    assert evaluate(workspace, edited, trained.version)["test"] == trained.metrics["test"]


def test_model_is_good_and_the_cost_rule_beats_half(trained):
    test, valid = trained.metrics["test"], trained.metrics["valid"]
    assert test["auc"] > 0.80
    assert trained.metrics["rows"] == {"train": 4788, "valid": 846, "test": 1409}
    assert valid["rows"] == 846 and test["rows"] == 1409
    # the threshold is chosen on the validation rows, so on those rows it can be no worse than 0.5
    assert valid["threshold"] == test["threshold"]
    assert valid["cost_per_row"] <= valid["cost_per_row_at_0_5"]
    # churn costs make missing a churner expensive: the rule acts well below 0.5
    assert valid["threshold"] < 0.5


def test_training_on_an_older_events_version_uses_only_its_rows(workspace, spec, telco_df):
    first, second = telco_df.head(3000), telco_df.slice(3000)
    r1 = ingest_frame(workspace, spec, first, batch_id="b-1", source="part-1", content_sha256="1" * 64)
    r2 = ingest_frame(workspace, spec, second, batch_id="b-2", source="part-2", content_sha256="2" * 64)
    assert (r1.events_version, r2.events_version) == (0, 1)
    old = train(workspace, spec, data_versions={"events": 0})
    new = train(workspace, spec)
    assert old.metrics["data_rows"] == 3000
    assert sum(old.metrics["rows"].values()) == 3000
    assert new.metrics["data_rows"] == 7043 and new.data_versions == {"events": 1}
    assert RunTracker(workspace).get(old.run_id)["data_versions"] == {"events": 0}
    ids = set(training_table(workspace, spec, {"events": 0}).column("customerID").to_pylist())
    assert ids == set(first["customerID"].to_list())
    assert evaluate(workspace, spec, old.version)["test"] == old.metrics["test"]
    assert evaluate(workspace, spec, old.version)["test"]["rows"] == 600


def _timed_frame(n: int = 1200, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    minutes = rng.permutation(n)  # rows arrive out of time order
    x = rng.normal(size=n)
    c = rng.choice(["a", "b", "c"], n)
    y = (x + (c == "a") + rng.normal(scale=0.7, size=n) > 0.4).astype(int)
    return pl.DataFrame({
        "id": [f"e{i}" for i in range(n)],
        "ts": [(start + timedelta(minutes=int(m))).isoformat() for m in minutes],
        "x": x, "c": c.tolist(), "label": [str(v) for v in y],
    })


TIMED_SPEC = {
    "name": "timed", "task": "binary", "target": "label", "positive_class": "1",
    "entity_key": "id", "event_time": "ts",
    "features": {"x": {"type": "numeric"}, "c": {"type": "categorical"}},
    "training": {"num_boost_round": ROUNDS, "params": {"min_data_in_leaf": 10}},
}


def test_time_aware_split_holds_out_the_newest_rows(workspace):
    spec = parse_spec(TIMED_SPEC)
    frame = _timed_frame()
    report = ingest_frame(workspace, spec, frame, batch_id="b-t", source="timed", content_sha256="t" * 64)
    assert report.rows_accepted == 1200
    result = train(workspace, spec)
    assert result.metrics["split"] == "time"
    assert result.metrics["rows"] == {"train": 816, "valid": 144, "test": 240}
    assert result.metrics["test"]["auc"] > 0.7

    table = training_table(workspace, spec, result.data_versions)
    split = split_rows(table, spec, labels_array(table, spec))
    assert split.kind == "time"
    ts = table.column("ts").to_numpy()
    assert ts[split.train].max() < ts[split.valid].min()
    assert ts[split.valid].max() < ts[split.test].min()
    newest = set(frame.sort("ts").tail(240)["id"].to_list())
    assert set(table.column("id").take(split.test).to_pylist()) == newest

    again = evaluate(workspace, spec, result.version)
    assert again["split"] == "time" and again["test"] == result.metrics["test"]


def test_without_event_time_the_split_is_stratified(workspace, spec, telco_csv):
    ingest_file(workspace, spec, telco_csv)
    table = training_table(workspace, spec, {"events": 0})
    y = labels_array(table, spec)
    split = split_rows(table, spec, y)
    assert split.kind == "stratified"
    parts = [split.train, split.valid, split.test]
    assert sum(len(p) for p in parts) == table.num_rows
    assert len(np.unique(np.concatenate(parts))) == table.num_rows
    rates = [y[p].mean() for p in parts]
    assert max(rates) - min(rates) < 0.01


def test_past_training_set_is_rebuilt_bit_for_bit(sqlite_workspace, churn_spec, telco_df, tmp_path):
    """`train --data-version` on an old version gives the same table and the same model, byte for byte."""
    import hashlib

    import pyarrow as pa

    from tidal.data.ingest import ingest_frame
    from tidal.registry.bundle import MODEL
    from tidal.training.dataset import training_table
    from tidal.training.trainer import train

    ws, spec = sqlite_workspace, churn_spec.model_copy(update={"training": churn_spec.training.model_copy(
        update={"num_boost_round": 40})})
    for i, part in enumerate((telco_df.head(3000), telco_df.slice(3000, 3000))):
        ingest_frame(ws, spec, part, batch_id=f"b{i}", source="t", content_sha256=f"sha{i}")

    def table_hash(version):
        table = training_table(ws, spec, {"events": version})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        return table.num_rows, hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()

    first = train(ws, spec, data_versions={"events": 0})
    again = train(ws, spec, data_versions={"events": 0})
    newest = train(ws, spec)
    assert table_hash(0) == table_hash(0) and table_hash(0)[0] == 3000
    assert table_hash(1)[0] == 6000
    read = lambda r: (Path(r.bundle_path) / MODEL).read_bytes()  # noqa: E731
    assert read(first) == read(again)
    assert read(first) != read(newest)
    assert first.metrics["test"] == again.metrics["test"]
    with pytest.raises(StateError, match="version 9 does not exist"):
        train(ws, spec, data_versions={"events": 9})
