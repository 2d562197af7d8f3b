"""The retraining policy, champion/challenger on business cost, and the promotion guardrails."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import TELCO
from tests.serving.conftest import make_project, telco_records
from tidal.errors import StateError
from tidal.serving.app import LABEL_SCHEMA, prediction_log_schema
from tidal.serving.logbuffer import LogBuffer
from tidal.serving.predictor import Predictor


def _log_traffic(project, n: int, *, offset: int = 3000, shift: float = 1.0) -> None:
    """Score n telco rows with the production model and log them with their true labels."""
    import polars as pl

    row, bundle = project.registry.load("production")
    predictor = Predictor(version=row["version"], bundle=bundle)
    records = telco_records(n, offset=offset)
    for r in records:
        r["MonthlyCharges"] *= shift
    labels = pl.read_csv(TELCO, infer_schema=False).slice(offset, n)["Churn"].to_list()
    scores = predictor.scores(records)
    preds, _, decisions = predictor.outputs(scores)
    start = datetime.now(timezone.utc)
    plog = LogBuffer(lake=project.ws.lake, table="predictions", schema=prediction_log_schema(project.spec),
                     capacity=n)
    llog = LogBuffer(lake=project.ws.lake, table="labels", schema=LABEL_SCHEMA, capacity=n)
    for i, (rec, s, p, d, y) in enumerate(zip(records, scores.tolist(), preds, decisions, labels)):
        pid = f"p{offset + i}"
        ts = start + timedelta(milliseconds=i)
        plog.append({"_id": pid, "_ts": ts, "_version": row["version"], "_score": s, "_prediction": p,
                     "_decision": d, **rec})
        llog.append({"_id": pid, "_label": y, "_ts": ts})
    assert plog.flush() == n and llog.flush() == n


def test_policy_does_not_fire_without_cause(tmp_path):
    project = make_project(tmp_path / "p")
    result = project.retrain()
    assert result == {"retrained": False, "promoted": False, "reasons": [], "message": "the policy did not fire"}
    assert len(project.models()) == 1


def test_enough_new_labels_fire_the_policy_and_the_decision_is_recorded(tmp_path):
    project = make_project(tmp_path / "p", retraining={"min_new_labels": 300, "holdout_share": 0.4})
    _log_traffic(project, 400)
    result = project.retrain()
    assert result["retrained"]
    assert any("400 new labelled rows" in r for r in result["reasons"])
    assert result["holdout_rows"] == 160
    assert len(project.models()) == 2
    run = [r for r in project.runs() if r["kind"] == "retrain"][0]
    assert run["data_versions"]["labels"] is not None
    assert run["metrics"]["challenge"]["challenger"] == 2
    # the promotion follows the cost comparison exactly
    better = result["challenger_holdout"]["cost_per_row"] < result["champion_holdout"]["cost_per_row"]
    assert result["promoted"] == (better and not result["guardrail_failures"])
    assert project.registry.resolve("production")["version"] == (2 if result["promoted"] else 1)
    # the same labels do not fire the policy again
    assert project.retrain()["retrained"] is False


def test_challenger_that_does_not_win_by_enough_is_not_promoted(tmp_path):
    project = make_project(tmp_path / "p", retraining={"min_new_labels": 100, "min_improvement": 5.0})
    _log_traffic(project, 300)
    result = project.retrain()
    assert result["retrained"] and not result["promoted"]
    assert "kept version 1" in result["message"]
    assert project.registry.resolve("production")["version"] == 1
    assert project.registry.resolve(2)["stage"] == "candidate"


def test_retrain_needs_labels_to_compare(tmp_path):
    project = make_project(tmp_path / "p")
    with pytest.raises(StateError, match="labelled predictions"):
        project.retrain(force=True)


@pytest.mark.parametrize("guardrails, words", [
    ({"max_model_size_mb": 0.001}, "bundle size"),
    ({"min_metric": {"name": "auc", "value": 0.99}}, "auc"),
    ({"p99_latency_ms": 0.000001}, "p99 latency"),
])
def test_promotion_gate_refuses_and_names_the_check(tmp_path, guardrails, words):
    project = make_project(tmp_path / "p", promote=False, guardrails=guardrails)
    with pytest.raises(StateError) as err:
        project.promote(1)
    assert words in " ".join(p.message for p in err.value.problems)
    assert project.registry.resolve(1)["stage"] == "candidate"
    project.promote(1, force=True, reason="accepted by the owner")
    last = project.registry.history()[-1]
    assert last["to_stage"] == "production" and "guardrails skipped" in last["reason"]
