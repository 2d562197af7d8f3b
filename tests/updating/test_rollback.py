"""Automatic rollback on the business metric, decided by the monitor."""

from __future__ import annotations

import polars as pl
import yaml

from tests.conftest import CHURN_SPEC, TELCO
from tests.updating.test_retrain import _log_traffic
from tidal.project import Project


def test_monitor_rolls_back_a_worse_new_version(tmp_path):
    spec = dict(CHURN_SPEC, training={"num_boost_round": 60},
                guardrails={"min_metric": {"name": "auc", "value": 0.8}},
                monitoring={"window": 500, "min_samples": 50, "min_labels": 50})
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    telco = pl.read_csv(TELCO, infer_schema=False)
    telco.head(80).write_csv(tmp_path / "tiny.csv")
    telco.slice(80, 2900).write_csv(tmp_path / "rest.csv")
    with Project.open(tmp_path / "tidal.yaml") as project:
        project.ingest(tmp_path / "tiny.csv")
        project.ingest(tmp_path / "rest.csv")
        good = project.train().version                              # all the data
        weak = project.train(data_versions={"events": 0}).version   # 80 rows only
        project.promote(good, force=True)
        project.promote(weak, force=True, reason="a careless update")
        _log_traffic(project, 400, offset=3000)                     # scored by the weak version, labelled
        result = project.monitor()
        assert any(a["kind"] == "performance" for a in result["alerts"])
        decision = result["rollback"]
        assert decision["rolled_back"] and decision["previous"] == good
        assert decision["previous_cost_per_row"] < decision["cost_per_row"]
        assert project.registry.resolve("production")["version"] == good
        last = project.registry.history()[-1]
        assert last["actor"] == "tidal-monitor" and "business metric" in last["reason"]


def test_no_rollback_without_a_better_previous_version(tmp_path):
    spec = dict(CHURN_SPEC, training={"num_boost_round": 60},
                guardrails={"min_metric": {"name": "auc", "value": 0.99}},
                monitoring={"window": 500, "min_samples": 50, "min_labels": 50})
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    with Project.open(tmp_path / "tidal.yaml") as project:
        project.ingest(TELCO)
        project.promote(project.train().version, force=True)
        _log_traffic(project, 300, offset=3000)
        result = project.monitor()
        assert any(a["kind"] == "performance" for a in result["alerts"])  # 0.99 is out of reach
        assert "rollback" not in result  # but there is no earlier version to go back to
        assert project.registry.resolve("production")["version"] == 1


def test_the_monitor_judges_only_the_production_versions_answers(tmp_path):
    from datetime import datetime, timedelta, timezone

    from tests.serving.conftest import make_project, telco_records
    from tidal.serving.app import prediction_log_schema
    from tidal.serving.logbuffer import LogBuffer

    project = make_project(tmp_path / "p", monitoring={"window": 300, "min_samples": 50, "min_labels": 50})
    _log_traffic(project, 200, offset=3000)  # production's answers, prices as in training
    # then another version's answers (a canary, or a version pinned to an older API) to pricier customers
    log = LogBuffer(lake=project.ws.lake, table="predictions", schema=prediction_log_schema(project.spec), capacity=200)
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    for i, rec in enumerate(telco_records(200, offset=3200)):
        rec["MonthlyCharges"] *= 3
        log.append({"_id": f"other{i}", "_ts": later + timedelta(milliseconds=i), "_version": 7, "_score": 0.5,
                    "_prediction": "No", "_decision": "No", **rec})
    assert log.flush() == 200
    result = project.monitor()
    assert result["model_version"] == 1 and result["n_predictions"] == 200  # version 7's rows are not production's
    assert not result["features"]["MonthlyCharges"]["drifted"], result["features"]["MonthlyCharges"]
    assert not any(a["kind"] == "drift" for a in result["alerts"])
    project.close()
