"""The promotion gate: a worse or unfair candidate is refused with the failed check named; a good one
passes; --force skips the gate and the audit trail says so; auto-promotion keeps the fairness limits."""

from __future__ import annotations

import pytest

from tests.serving.conftest import make_project
from tests.updating.test_retrain import _log_traffic
from tidal.errors import StateError
from tidal.spec import Fairness


def _train(project, **training) -> int:
    project.spec = project.spec.model_copy(update={"training": project.spec.training.model_copy(update=training)})
    return project.train().version


def test_gate_refuses_a_candidate_worse_on_business_cost_and_force_records_the_skip(tmp_path):
    project = make_project(tmp_path / "p", promote=True)  # version 1, a real model, in production
    # version 2 is barely trained, so it acts on everyone or no one
    weak = _train(project, num_boost_round=1, params={"learning_rate": 0.001, "num_leaves": 2})
    with pytest.raises(StateError) as err:
        project.promote(weak)
    problems = {p.location: p.message for p in err.value.problems}
    assert list(problems) == ["business cost"]
    assert "worse than the champion's (version 1)" in problems["business cost"]
    assert "on the same 1409 held-out rows" in problems["business cost"]
    assert "fails the promotion gate: business cost" in str(err.value)
    assert "business cost: held-out cost per row" in str(err.value)
    assert project.registry.resolve("production")["version"] == 1
    assert project.registry.resolve(weak)["stage"] == "candidate"
    # --force skips the gate, and the audit trail says so
    project.promote(weak, force=True, reason="owner accepts the cost")
    last = project.registry.history()[-1]
    assert last["version"] == weak and last["to_stage"] == "production"
    assert last["reason"].startswith("owner accepts the cost (guardrails skipped with --force")
    assert "fairness" in last["reason"] and "business cost" in last["reason"]
    project.close()


def test_gate_accepts_a_better_candidate(tmp_path):
    project = make_project(tmp_path / "p", promote=False, versions=0,
                           fairness={"sensitive": ["gender"], "max_demographic_parity_difference": 0.2})
    weak = _train(project, num_boost_round=1, params={"learning_rate": 0.001, "num_leaves": 2})
    project.promote(weak)  # nothing in production yet: no cost comparison, and gender passes
    good = _train(project, num_boost_round=40, params={"learning_rate": 0.05, "num_leaves": 31})
    row = project.promote(good)
    assert row["stage"] == "production" and row["version"] == good
    assert "skipped" not in project.registry.history()[-1]["reason"]
    project.close()


def test_gate_refuses_an_unfair_candidate_naming_the_attribute(tmp_path):
    project = make_project(tmp_path / "p", promote=False,
                           fairness={"sensitive": ["gender", "SeniorCitizen"], "max_demographic_parity_difference": 0.1})
    with pytest.raises(StateError) as err:
        project.promote(1)
    [problem] = err.value.problems
    assert problem.location == "fairness"
    assert problem.message.startswith("demographic parity difference")
    assert "on SeniorCitizen exceeds 0.1" in problem.message
    assert "fairness: demographic parity difference" in str(err.value)
    assert project.registry.resolve(1)["stage"] == "candidate"
    project.close()


def test_every_failed_check_is_named_at_once(tmp_path):
    project = make_project(tmp_path / "p", promote=False, guardrails={"max_model_size_mb": 0.001},
                           fairness={"sensitive": ["SeniorCitizen"], "max_equal_opportunity_difference": 0.0,
                                     "max_demographic_parity_difference": 0.1})
    with pytest.raises(StateError) as err:
        project.promote(1)
    locations = [p.location for p in err.value.problems]
    assert locations == ["size", "fairness", "fairness"]
    assert "size, fairness" in err.value.message
    project.close()


def test_auto_promotion_refuses_a_challenger_that_breaks_a_fairness_limit(tmp_path):
    project = make_project(tmp_path / "p", promote=False, retraining={"min_new_labels": 100, "holdout_share": 0.4})
    project.promote(1)
    _log_traffic(project, 200)
    # the owner then sets a limit no model meets on the recent rows: the challenger cannot be promoted
    project.spec = project.spec.model_copy(update={"fairness": Fairness(
        sensitive=["gender"], max_demographic_parity_difference=0.0, min_group_rows=10)})
    result = project.retrain()
    assert result["retrained"] and not result["promoted"]
    assert any(f.startswith("fairness: demographic parity difference") and "on gender exceeds 0" in f
               for f in result["guardrail_failures"])
    assert project.registry.resolve("production")["version"] == 1
    project.close()
