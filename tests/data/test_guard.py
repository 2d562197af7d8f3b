"""The poisoning guard and quarantine: poisoned batches are held, clean ones pass, held rows
never reach a training set until released, and a release is exact and happens once."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import yaml

from tests.conftest import CHURN_SPEC, TELCO
from tidal.data.quarantine import drop, list_quarantine, release, show_quarantine
from tidal.errors import DataValidationError, StateError
from tidal.project import Project
from tidal.training.dataset import training_table


def _write(df: pl.DataFrame, path):
    df.write_csv(path)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A project trained on the first 4000 Telco rows, in production; the rest is new traffic."""
    root = tmp_path_factory.mktemp("guard")
    spec = dict(CHURN_SPEC, training={"num_boost_round": 60})
    (root / "tidal.yaml").write_text(yaml.safe_dump(spec))
    telco = pl.read_csv(TELCO, infer_schema=False).sample(fraction=1.0, shuffle=True, seed=3)
    project = Project.open(root / "tidal.yaml")
    project.ingest(_write(telco.head(4000), root / "trusted.csv"))
    project.promote(project.train().version)
    yield project, telco.slice(4000), root
    project.close()


def _flip(df: pl.DataFrame, share: float, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    flip = pl.Series(rng.random(df.height) < share)
    other = pl.when(pl.col("Churn") == "Yes").then(pl.lit("No")).otherwise(pl.lit("Yes"))
    return df.with_columns(pl.when(flip).then(other).otherwise(pl.col("Churn")).alias("Churn"))


def _flood(df: pl.DataFrame, share: float, factor: float) -> pl.DataFrame:
    n = int(df.height * share)
    shifted = (pl.col("MonthlyCharges").cast(pl.Float64) * factor).cast(pl.String)
    return df.with_columns(pl.when(pl.int_range(pl.len()) < n).then(shifted)
                           .otherwise(pl.col("MonthlyCharges")).alias("MonthlyCharges"))


def _events_batches(project) -> set[str]:
    events = project.ws.lake.read("events")
    return set(events.column("_batch_id").to_pylist())


def test_clean_batch_passes_every_check(base):
    project, future, root = base
    report = project.ingest(_write(future.slice(0, 800), root / "clean.csv"))[0]
    assert report.status == "accepted" and report.rows_accepted == 800
    names = {c["check"].split(":")[0] for c in report.checks}
    assert {"label_shift", "label_consistency", "duplicates", "outliers", "feature_shift"} <= names
    assert not [c for c in report.failed_checks if c["severity"] != "warn"]


def test_flipped_labels_are_held_and_never_trained_on(base):
    project, future, root = base
    report = project.ingest(_write(_flip(future.slice(800, 800), 0.2, seed=1), root / "flipped.csv"))[0]
    assert report.status == "held" and report.rows_accepted == 0 and report.rows_quarantined == 800
    failed = {c["check"] for c in report.failed_checks}
    assert "label_consistency" in failed
    assert report.batch_id not in _events_batches(project)
    table = training_table(project.ws, project.spec, {"events": project.ws.lake.version("events")})
    assert table.num_rows == 4000 + 800  # the trusted and the clean batch only
    listed = {q["batch_id"]: q for q in list_quarantine(project.ws)}
    assert listed[report.batch_id]["rows"] == 800 and "batch held" in listed[report.batch_id]["reasons"]


def test_shifted_flood_is_held(base):
    project, future, root = base
    report = project.ingest(_write(_flood(future.slice(1600, 800), 0.10, 4.0), root / "flood.csv"))[0]
    assert report.status == "held"
    assert "outliers" in {c["check"] for c in report.failed_checks}


def test_near_duplicate_flood_is_held(base):
    project, future, root = base
    batch = future.slice(2400, 600)
    copies = pl.concat([batch.head(1)] * 90).with_columns(
        (pl.col("MonthlyCharges").cast(pl.Float64) + pl.int_range(pl.len()) * 0.001).cast(pl.String))
    report = project.ingest(_write(pl.concat([batch, copies]), root / "dupes.csv"))[0]
    assert report.status == "held"
    assert "duplicates" in {c["check"] for c in report.failed_checks}


def test_low_trust_sources_get_stricter_rules(base):
    project, future, root = base
    mild = _flood(future.slice(0, 700), 0.03, 4.0)  # 3% out of range: under the 4% limit, over the 2% one
    low = project.ingest(_write(mild.with_columns(pl.col("customerID") + "-x"), root / "mild_low.csv"), trust="low")[0]
    assert low.status == "held"
    assert "outliers" in {c["check"] for c in low.failed_checks}
    high = project.ingest(_write(mild, root / "mild_high.csv"))[0]
    assert high.status == "accepted"


def test_release_enters_the_lake_once_with_the_original_batch_id(base):
    project, future, root = base
    report = project.ingest(_write(_flip(future.slice(1200, 400), 0.3, seed=2), root / "to_release.csv"))[0]
    assert report.status == "held"
    shown = show_quarantine(project.ws, report.batch_id, limit=5)
    assert shown["rows"] == 400 and len(shown["sample"]) == 5 and "Churn" in shown["sample"][0]["record"]
    before = project.ws.lake.read("events").num_rows
    out = release(project.ws, project.spec, report.batch_id, actor="tester", reason="checked by hand")
    assert out["released"] == 400 and out["still_failing"] == 0
    events = project.ws.lake.read("events")
    assert events.num_rows == before + 400
    mine = pl.from_arrow(events).filter(pl.col("_batch_id") == report.batch_id)
    assert mine.height == 400 and mine["_row"].n_unique() == 400
    with pytest.raises(StateError, match="already released"):
        release(project.ws, project.spec, report.batch_id, actor="tester", reason="again")
    assert report.batch_id not in {q["batch_id"] for q in list_quarantine(project.ws)}


def test_drop_keeps_rows_out_for_good(base):
    project, future, root = base
    report = project.ingest(_write(_flip(future.slice(2000, 400), 0.3, seed=5), root / "to_drop.csv"))[0]
    assert drop(project.ws, report.batch_id, actor="tester", reason="poisoned")["dropped"] == 400
    assert report.batch_id not in _events_batches(project)
    decided = {q["batch_id"]: q for q in list_quarantine(project.ws, include_decided=True)}
    assert decided[report.batch_id]["status"] == "dropped"


def test_reject_severity_refuses_the_batch_and_writes_nothing(tmp_path):
    spec = dict(CHURN_SPEC, training={"num_boost_round": 30},
                validation={"outlier_severity": "reject", "min_reference_rows": 100})
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    telco = pl.read_csv(TELCO, infer_schema=False)
    with Project.open(tmp_path / "tidal.yaml") as project:
        project.ingest(_write(telco.head(3000), tmp_path / "a.csv"))
        version = project.ws.lake.version("events")
        with pytest.raises(DataValidationError, match="rejected") as err:
            project.ingest(_write(_flood(telco.slice(3000, 1000), 0.2, 5.0), tmp_path / "b.csv"))
        assert "outliers" in [p.location for p in err.value.problems]
        assert project.ws.lake.version("events") == version
        assert project.ws.lake.read("quarantine") is None


def test_repeated_keys_are_quarantined_row_by_row(tmp_path):
    spec = dict(CHURN_SPEC, training={"num_boost_round": 30})
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    telco = pl.read_csv(TELCO, infer_schema=False).head(300)
    with Project.open(tmp_path / "tidal.yaml") as project:
        report = project.ingest(_write(pl.concat([telco, telco.head(7)]), tmp_path / "dup.csv"))[0]
        assert report.rows_accepted == 300 and report.rows_quarantined == 7
        assert report.reasons["unique_key"] == 7
