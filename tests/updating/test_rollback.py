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
