"""Business-cost decision rules, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from tidal.spec import BinaryCosts, RegressionCosts
from tidal.training.costs import (
    binary_cost,
    binary_metrics,
    optimal_offset,
    optimal_threshold,
    regression_cost,
    regression_metrics,
)

BINARY_COSTS = [
    BinaryCosts(true_positive=-20, false_positive=10, true_negative=0, false_negative=60),
    BinaryCosts(true_positive=0, false_positive=5, true_negative=0, false_negative=1),
    BinaryCosts(true_positive=1, false_positive=3, true_negative=-0.5, false_negative=7),
]


def _brute_force_binary(y, score, costs) -> float:
    thresholds = np.concatenate([np.unique(score), [np.inf]])
    return min(binary_cost(y, score >= t, costs) for t in thresholds)


def _brute_force_regression(y, pred, costs) -> float:
    # the cost is piecewise linear and convex in the offset, with kinks at the residuals
    return min(regression_cost(y, pred + r, costs) for r in np.unique(y - pred))


def test_binary_cost_counts_each_outcome():
    costs = BinaryCosts(true_positive=-2, false_positive=3, true_negative=0.5, false_negative=7)
    y = np.array([1, 1, 0, 0, 1])
    act = np.array([True, False, True, False, True])
    # tp=2, fn=1, fp=1, tn=1
    assert binary_cost(y, act, costs) == pytest.approx((2 * -2 + 7 + 3 + 0.5) / 5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("costs", BINARY_COSTS, ids=["churn", "fp-heavy", "tn-gain"])
@pytest.mark.parametrize("ties", [False, True])
def test_optimal_threshold_matches_brute_force(seed, costs, ties):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(float)
    score = np.clip(0.3 * y + rng.normal(0.35, 0.2, n), 0, 1)
    if ties:
        score = np.round(score, 1)
    t = optimal_threshold(y, score, costs)
    assert binary_cost(y, score >= t, costs) == pytest.approx(_brute_force_binary(y, score, costs), abs=1e-12)


def test_optimal_threshold_acts_on_everyone_or_no_one_when_that_is_cheapest():
    y = np.array([0, 1, 0, 1, 1.0])
    score = np.array([0.1, 0.4, 0.2, 0.9, 0.3])
    always = BinaryCosts(true_positive=-5, false_positive=-1, true_negative=0, false_negative=5)
    assert np.all(score >= optimal_threshold(y, score, always))
    never = BinaryCosts(true_positive=5, false_positive=5, true_negative=0, false_negative=0)
    assert not np.any(score >= optimal_threshold(y, score, never))


def test_optimal_threshold_separates_adjacent_scores():
    """The best rule acts on the positive (higher score) only; the two scores are adjacent floats."""
    costs = BinaryCosts(true_positive=0, false_positive=1, true_negative=0, false_negative=1)
    y = np.array([1.0, 0.0])
    score = np.array([np.nextafter(1.0, 2.0), 1.0])
    t = optimal_threshold(y, score, costs)
    assert list(score >= t) == [True, False]
    assert binary_cost(y, score >= t, costs) == 0.0


def test_regression_cost_is_asymmetric():
    costs = RegressionCosts(under_per_unit=3, over_per_unit=1)
    y = np.array([10.0, 10.0])
    assert regression_cost(y, np.array([8.0, 8.0]), costs) == pytest.approx(6.0)   # 2 too low, 3 per unit
    assert regression_cost(y, np.array([12.0, 12.0]), costs) == pytest.approx(2.0)  # 2 too high, 1 per unit


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("under,over", [(3, 1), (1, 4), (5, 2), (1, 1), (0.3, 7)])
def test_optimal_offset_minimises_regression_cost(seed, under, over):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.normal(50, 10, n)
    pred = y + rng.normal(-2, 5, n)
    costs = RegressionCosts(under_per_unit=under, over_per_unit=over)
    offset = optimal_offset(y, pred, costs)
    best = _brute_force_regression(y, pred, costs)
    assert regression_cost(y, pred + offset, costs) <= best + 1e-9
    # and it beats a fine grid of other offsets too
    grid = np.linspace(offset - 20, offset + 20, 801)
    assert regression_cost(y, pred + offset, costs) <= min(regression_cost(y, pred + g, costs) for g in grid) + 1e-9


def test_optimal_offset_shifts_towards_the_costlier_side():
    rng = np.random.default_rng(0)
    y = rng.normal(0, 1, 500)
    pred = np.zeros(500)
    assert optimal_offset(y, pred, RegressionCosts(under_per_unit=9, over_per_unit=1)) > 0.5
    assert optimal_offset(y, pred, RegressionCosts(under_per_unit=1, over_per_unit=9)) < -0.5
    assert optimal_offset(y, pred, RegressionCosts(under_per_unit=0, over_per_unit=0)) == 0.0
    assert optimal_offset(np.array([]), np.array([]), RegressionCosts()) == 0.0


def test_metrics_use_the_given_rule():
    costs = BINARY_COSTS[0]
    y = np.array([0, 1, 0, 1, 1, 0.0])
    score = np.array([0.1, 0.8, 0.6, 0.3, 0.9, 0.2])
    m = binary_metrics(y, score, 0.25, costs)
    assert m["rows"] == 6 and m["auc"] == pytest.approx(8 / 9)
    assert m["cost_per_row"] == pytest.approx(binary_cost(y, score >= 0.25, costs))
    assert m["cost_per_row_at_0_5"] == pytest.approx(binary_cost(y, score >= 0.5, costs))
    assert m["act_rate"] == pytest.approx(4 / 6)
    assert binary_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]), 0.5, costs)["auc"] is None
    r = regression_metrics(np.array([1.0, 3.0]), np.array([2.0, 2.0]), 0.5, RegressionCosts())
    assert r["rmse"] == pytest.approx(1.0) and r["mae"] == pytest.approx(1.0)
    assert r["cost_per_row"] == pytest.approx(1.0) and r["offset"] == 0.5
