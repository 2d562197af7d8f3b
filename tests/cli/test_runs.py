"""`tidal runs list|show|compare` (and bare `tidal runs`) and `tidal report`, run in-process on a
workspace with two trained versions."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from tests.serving.conftest import make_project
from tidal import cli

ENV = {"NO_COLOR": "1", "COLUMNS": "240", "TIDAL_SPEC": ""}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("runs"), versions=2,
                           fairness={"sensitive": ["gender"], "max_demographic_parity_difference": 0.3})
    runs = [r["run_id"] for r in project.runs()]
    spec = str(project.spec_path)
    project.close()
    return spec, runs


def tidal(*args: str) -> str:
    result = CliRunner().invoke(cli.app, list(args), env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_runs_list_and_bare_runs(trained):
    spec, (a, b) = trained
    listed = tidal("runs", "list", "--spec", spec)
    assert tidal("runs", "--spec", spec) == listed  # `tidal runs` still lists
    assert a in listed and b in listed and "duration_s" in listed and "cost_per_row" in listed
    rows = json.loads(tidal("runs", "list", "--json", "--spec", spec))
    assert [r["run_id"] for r in rows] == [a, b]
    for r in rows:
        assert r["status"] == "finished" and r["duration_s"] > 0
        assert r["params"]["training"]["num_boost_round"] == 40
        assert r["metrics"]["test"]["auc"] > 0.8 and r["metrics"]["baseline"]["model"] == "LogisticRegression"
        assert r["data_versions"] == {"events": 0} and r["code_version"]


def test_runs_show(trained):
    spec, (a, _) = trained
    run = json.loads(tidal("runs", "show", a, "--json", "--spec", spec))
    assert run["run_id"] == a and run["model_version"] == 1
    files = {f["file"]: f["bytes"] for f in run["artifacts"]}
    assert {"model.txt", "pipeline.json", "signature.json", "metrics.json", "manifest.json"} <= set(files)
    assert all(size > 0 for size in files.values())
    text = tidal("runs", "--spec", spec, "show", a)  # --spec given to the group works too
    assert f"run {a} (train, finished), model version 1" in text
    assert "duration" in text and "code version" in text and "events" in text
    assert "training.num_boost_round" in text and "test.auc" in text and "model.txt" in text


def test_runs_compare(trained):
    spec, (a, b) = trained
    out = json.loads(tidal("runs", "compare", a, b, "--json", "--spec", spec))
    metrics = {r["key"]: r for r in out["metrics"]}
    assert metrics["test.auc"]["a"] == metrics["test.auc"]["b"] and metrics["test.auc"]["difference"] == 0
    assert not metrics["test.auc"]["differs"]
    run = {r["key"]: r for r in out["run"]}
    assert run["model_version"]["a"] == 1 and run["model_version"]["b"] == 2 and run["model_version"]["differs"]
    params = {r["key"]: r for r in out["params"]}
    assert "training.num_boost_round" in params and "lightgbm.objective" in params
    text = tidal("runs", "compare", a, b, "--only-differences", "--spec", spec)
    assert "model_version" in text and "params: no differences" in text


def test_unknown_run_is_one_clear_error(trained, monkeypatch, capsys):
    spec, _ = trained
    monkeypatch.setattr(sys, "argv", ["tidal", "runs", "show", "nope", "--spec", spec])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: run nope does not exist") and "tidal runs list" in err


def test_report_command_writes_the_page_and_prints_a_summary(trained, tmp_path):
    spec, _ = trained
    page = tmp_path / "page.html"
    text = tidal("report", "2", "--champion", "production", "--html", str(page), "--spec", spec)
    assert "model version 2 on 1409 held-out rows" in text
    assert "baseline (LogisticRegression)" in text and "champion version 1" in text
    assert "fairness on gender: parity gap" in text and "limit 0.3: pass" in text
    assert f"report: {page}" in text and page.read_text().count("<svg") == 5
    out = json.loads(tidal("report", "--champion", "none", "--json", "--spec", spec))
    assert out["version"] == 2 and out["comparison"]["champion"] is None
    assert out["html"].endswith("churn-v2.html")
