"""The whole loop through a real server on a socket: the demo, with its figures checked."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT


def _demo():
    spec = importlib.util.spec_from_file_location("churn_demo", ROOT / "examples" / "churn" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_whole_loop_end_to_end(tmp_path):
    figures = _demo().run(tmp_path / "demo", quiet=True)
    history, broken = figures["ingest"]
    assert history["rows_quarantined"] == 0 and history["rows_accepted"] == history["rows_total"]
    assert broken["rows_quarantined"] == 30 and broken["rows_accepted"] == 10
    assert set(broken["reasons"]) == {"tenure", "Contract", "MonthlyCharges"}
    ev = figures["evaluate"]
    assert ev["auc"] > 0.8
    assert ev["cost_per_row"] < ev["cost_per_row_at_0_5"]
    assert figures["traffic"]["failed"] == 0 and figures["failed_requests"] == 0
    assert "MonthlyCharges" in figures["monitor"]["drifted"]
    assert any(a["kind"] == "drift" for a in figures["monitor"]["alerts"])
    decision = figures["retrain"]
    assert decision["retrained"] and decision["challenger"] == 2
    assert any("drift alert" in r for r in decision["reasons"])
    # the challenger is promoted exactly when it costs less on the newest labelled rows
    cheaper = decision["challenger_holdout"]["cost_per_row"] < decision["champion_holdout"]["cost_per_row"]
    assert decision["promoted"] == (cheaper and not decision["guardrail_failures"]), decision["message"]
    assert figures["production_version"] == (2 if decision["promoted"] else 1)
    assert figures["served_version"] == figures["production_version"]
    # every answered prediction was logged, including those sent just before shutdown
    assert figures["logged_predictions"] >= figures["traffic"]["requests"]
