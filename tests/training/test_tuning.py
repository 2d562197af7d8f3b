"""Tuning with Optuna: budgets, a small seeded study on Telco, its record in the run, the CLI's --tune."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import CHURN_SPEC, TELCO
from tidal import cli
from tidal.errors import InvalidArgument, TidalError
from tidal.project import Project
from tidal.training.trainer import lgb_params
from tidal.training.tuning import SEARCH_SPACE, Budget, parse_budget

TRAINING = {"num_boost_round": 60, "early_stopping_rounds": 15}


@pytest.mark.parametrize("text, budget", [
    ("5m", Budget(seconds=300)), ("90s", Budget(seconds=90)), ("1h", Budget(seconds=3600)),
    ("30", Budget(trials=30)), (" 2M ", Budget(seconds=120)), ("1.5m", Budget(seconds=90)), (7, Budget(trials=7)),
])
def test_budget_is_a_time_or_a_number_of_trials(text, budget):
    assert parse_budget(text) == budget
    assert parse_budget(budget) is budget


@pytest.mark.parametrize("text", ["", "abc", "0", "0s", "-5m", "5x", "1.5", "5 minutes", True])
def test_a_malformed_budget_says_what_is_allowed(text):
    with pytest.raises(InvalidArgument) as err:
        parse_budget(text)
    assert isinstance(err.value, ValueError) and isinstance(err.value, TidalError)
    assert "90s" in err.value.fix and "30" in err.value.fix


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    (root / "tidal.yaml").write_text(yaml.safe_dump(dict(CHURN_SPEC, training=TRAINING)))
    with Project.open(root / "tidal.yaml") as project:
        project.ingest(TELCO)
        yield project


@pytest.fixture(scope="module")
def tuned(project):
    calls = []
    result = project.train(tune="3", progress=calls.append)
    return result, calls


def test_a_three_trial_study_is_recorded_in_the_run(project, tuned):
    result, _ = tuned
    run = project.run(result.run_id)
    study = run["params"]["tuning"]
    assert study["trials"] == 3 and study["budget_trials"] == 3 and study["budget"] == "3 trials"
    assert study["metric"] == "binary_logloss" and study["sampler"] == "TPE" and study["seed"] == 7
    assert study["completed"] + study["pruned"] == 3
    assert study["best_value"] <= study["default_value"]  # the first trial is the spec's own parameters
    assert set(study["best_params"]) == set(SEARCH_SPACE) | {"bagging_freq"}
    assert result.metrics["tuning"]["best_value"] == study["best_value"]
    assert run["metrics"]["tuning"]["trials"] == 3


def test_the_best_parameters_train_the_final_model(project, tuned):
    result, _ = tuned
    run = project.run(result.run_id)
    used, defaults = run["params"]["lightgbm"], lgb_params(project.spec)
    best = run["params"]["tuning"]["best_params"]
    assert all(used[k] == v for k, v in best.items())
    assert any(used[k] != defaults[k] for k in SEARCH_SPACE)  # the seeded study finds better than the defaults
    row, bundle = project.registry.load(result.version)
    assert row["run_id"] == result.run_id and bundle.booster.num_trees() == result.metrics["best_iteration"]
    assert result.metrics["test"]["auc"] > 0.8


def test_the_study_is_reproducible(project, tuned):
    result, _ = tuned
    again = project.train(tune=3)
    first, second = (project.run(r.run_id)["params"]["tuning"] for r in (result, again))
    assert first["best_params"] == second["best_params"] and first["best_value"] == second["best_value"]


def test_progress_is_called_after_every_trial(tuned):
    _, calls = tuned
    assert [c["trial"] for c in calls] == [1, 2, 3]
    assert all(c["budget_trials"] == 3 and c["budget_seconds"] is None for c in calls)
    assert calls[0]["state"] == "complete" and calls[0]["best_value"] == calls[0]["value"]
    bests = [c["best_value"] for c in calls]
    assert bests == sorted(bests, reverse=True)  # the best so far never worsens
    assert all(c["elapsed"] >= 0 for c in calls)


def test_a_time_budget_stops_the_study(project):
    result = project.train(tune="2s")
    study = project.run(result.run_id)["params"]["tuning"]
    assert study["budget_seconds"] == 2 and study["trials"] >= 1
    assert study["seconds"] < 30  # a trial still running at the deadline is stopped, not waited for


def test_given_params_override_the_spec(project):
    result = project.train(params={"num_leaves": 4, "learning_rate": 0.1})
    used = project.run(result.run_id)["params"]["lightgbm"]
    assert used["num_leaves"] == 4 and used["learning_rate"] == 0.1
    assert used["lambda_l2"] == lgb_params(project.spec)["lambda_l2"]  # the rest keep tidal's defaults


def test_cli_train_tune(project):
    env = {"NO_COLOR": "1", "COLUMNS": "200", "TIDAL_SPEC": ""}
    result = CliRunner().invoke(cli.app, ["train", "--tune", "2", "--json", "--spec", str(project.spec_path)],
                                env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    out = json.loads(result.output)
    assert out["metrics"]["tuning"]["trials"] == 2
    bad = CliRunner().invoke(cli.app, ["train", "--tune", "soon", "--spec", str(project.spec_path)], env=env)
    assert bad.exit_code != 0 and isinstance(bad.exception, InvalidArgument)


def test_a_regression_study_minimises_l2(tmp_path):
    features = {k: v for k, v in CHURN_SPEC["features"].items() if k != "MonthlyCharges"}
    spec = {"name": "charges", "task": "regression", "target": "MonthlyCharges", "features": features,
            "training": TRAINING}
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    with Project.open(tmp_path / "tidal.yaml") as project:
        project.ingest(TELCO)
        result = project.train(tune=2)
        params = project.run(result.run_id)["params"]
    assert params["tuning"]["metric"] == "l2" and params["tuning"]["trials"] == 2
    assert "best_valid_cost_per_row" in params["tuning"] and "imbalance" not in params
    assert result.metrics["test"]["rmse"] < 10
