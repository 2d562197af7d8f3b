"""Class imbalance: the weighting choice of each mode, and a rare-positive Telco sample trained end to end."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from tidal.data.ingest import ingest_frame
from tidal.spec import BinaryCosts
from tidal.training.imbalance import RARE_POSITIVE_RATE, choose, sample_weights
from tidal.training.runs import RunTracker
from tidal.training.trainer import train


def _labels(pos: int, neg: int) -> np.ndarray:
    return np.array([1.0] * pos + [0.0] * neg)


def test_auto_weights_rare_positives_by_the_square_root_of_the_ratio():
    choice = choose("auto", _labels(20, 980), {})
    assert choice["weighting"] == "sqrt" and choice["positive_rate"] == 0.02
    assert choice["positive_weight"] == pytest.approx(math.sqrt(980 / 20))
    assert "2.00%" in choice["reason"]


def test_auto_leaves_common_positives_alone():
    choice = choose("auto", _labels(int(RARE_POSITIVE_RATE * 1000), 1000 - int(RARE_POSITIVE_RATE * 1000)), {})
    assert choice["weighting"] == "none" and choice["positive_weight"] == 1.0
    assert sample_weights(_labels(5, 5), choice) is None


def test_balanced_and_none():
    assert choose("balanced", _labels(100, 900), {})["positive_weight"] == pytest.approx(9.0)
    assert choose("balanced", _labels(400, 600), {})["weighting"] == "balanced"  # whatever the rate
    assert choose("none", _labels(1, 999), {})["weighting"] == "none"


def test_the_users_own_lightgbm_weighting_stands():
    for params in ({"scale_pos_weight": 3.0}, {"is_unbalance": True}):
        choice = choose("auto", _labels(10, 990), params)
        assert choice["weighting"] == "params" and choice["positive_weight"] == 1.0
    assert choose("auto", _labels(10, 990), {"is_unbalance": False})["weighting"] == "sqrt"


def test_sample_weights_weigh_positives_only():
    w = sample_weights(np.array([1.0, 0.0, 1.0]), {"positive_weight": 4.0})
    assert w.tolist() == [4.0, 1.0, 4.0]


@pytest.fixture
def rare(churn_spec, telco_df):
    """Telco with churners subsampled to 2% of the rows (the fraud data's problem, on data in the repo)."""
    pos, neg = telco_df.filter(pl.col("Churn") == "Yes"), telco_df.filter(pl.col("Churn") == "No")
    n_pos = round(0.02 / 0.98 * neg.height)
    frame = pl.concat([neg, pos.sample(n=n_pos, seed=3)]).sample(fraction=1.0, shuffle=True, seed=4)
    # costs of a fraud review: acting on a few suspects pays (a missed positive costs 20 reviews)
    spec = churn_spec.model_copy(update={
        "costs": BinaryCosts(true_positive=5, false_positive=5, true_negative=0, false_negative=100),
        "training": churn_spec.training.model_copy(update={"num_boost_round": 150, "early_stopping_rounds": 30})})
    return spec, frame


def _train(ws, spec, frame, imbalance):
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"imbalance": imbalance})})
    if ws.lake.version("events") is None:
        ingest_frame(ws, spec, frame, batch_id="rare", source="test", content_sha256="rare")
    result = train(ws, spec)
    return result, RunTracker(ws).get(result.run_id)["params"]


def test_auto_reweights_a_rare_positive_sample_and_the_threshold_still_pays(sqlite_workspace, rare):
    spec, frame = rare
    result, params = _train(sqlite_workspace, spec, frame, "auto")
    choice = params["imbalance"]
    assert choice["mode"] == "auto" and choice["weighting"] == "sqrt"
    assert 0.015 < choice["positive_rate"] < 0.025
    assert choice["positive_weight"] == pytest.approx(math.sqrt((1 - choice["positive_rate"]) / choice["positive_rate"]))
    valid = result.metrics["valid"]
    # scores of a weighted model are not probabilities: the cost-optimal threshold, not 0.5, makes the decisions
    assert valid["cost_per_row"] < valid["cost_per_row_at_0_5"]
    assert valid["threshold"] != 0.5
    assert result.metrics["test"]["auc"] > 0.7


def test_none_does_not_weight(sqlite_workspace, rare):
    spec, frame = rare
    _, params = _train(sqlite_workspace, spec, frame, "none")
    assert params["imbalance"]["weighting"] == "none" and params["imbalance"]["positive_weight"] == 1.0
    assert "scale_pos_weight" not in params["lightgbm"]
