"""Business cost and ML metrics, shared by evaluation, monitoring and the retraining policy."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from tidal.spec import BinaryCosts, RegressionCosts


def binary_cost(y: np.ndarray, act: np.ndarray, costs: BinaryCosts) -> float:
    """Mean cost per row of acting where ``act`` is true."""
    y = y.astype(bool)
    act = act.astype(bool)
    total = (costs.true_positive * np.sum(y & act) + costs.false_positive * np.sum(~y & act)
             + costs.false_negative * np.sum(y & ~act) + costs.true_negative * np.sum(~y & ~act))
    return float(total / max(len(y), 1))


def optimal_threshold(y: np.ndarray, score: np.ndarray, costs: BinaryCosts) -> float:
    """The score threshold (act when score >= t) with the lowest mean cost on (y, score)."""
    order = np.argsort(-score, kind="stable")
    s, yy = score[order], y[order].astype(bool)
    tp = np.concatenate([[0], np.cumsum(yy)])
    fp = np.concatenate([[0], np.cumsum(~yy)])
    pos, neg = tp[-1], fp[-1]
    cost = (costs.true_positive * tp + costs.false_positive * fp
            + costs.false_negative * (pos - tp) + costs.true_negative * (neg - fp))
    # acting on the first k rows is only possible where the score changes between k-1 and k
    k_ok = np.ones(len(s) + 1, dtype=bool)
    k_ok[1:-1] = s[:-1] != s[1:]
    k = int(np.argmin(np.where(k_ok, cost, np.inf)))
    if k == 0:
        return float(np.nextafter(s[0], np.inf)) if len(s) else 0.5
    if k == len(s):
        return float(s[-1])
    mid = (s[k - 1] + s[k]) / 2
    return float(mid if mid > s[k] else s[k - 1])  # adjacent floats: the midpoint may round down


def regression_cost(y: np.ndarray, pred: np.ndarray, costs: RegressionCosts) -> float:
    err = y - pred
    return float(np.mean(np.where(err > 0, err * costs.under_per_unit, -err * costs.over_per_unit)))


def optimal_offset(y: np.ndarray, pred: np.ndarray, costs: RegressionCosts) -> float:
    """Shift of the point prediction that minimises the asymmetric linear cost (a residual quantile)."""
    total = costs.under_per_unit + costs.over_per_unit
    if total == 0 or len(y) == 0:
        return 0.0
    # inverted_cdf: the minimiser is a data point, not an interpolation between two
    return float(np.quantile(y - pred, costs.under_per_unit / total, method="inverted_cdf"))


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float, costs: BinaryCosts) -> dict[str, Any]:
    y = y.astype(int)
    both = len(np.unique(y)) == 2
    clipped = np.clip(score, 1e-7, 1 - 1e-7)
    return {
        "rows": int(len(y)),
        "positive_rate": float(y.mean()) if len(y) else 0.0,
        "auc": float(roc_auc_score(y, score)) if both else None,
        "pr_auc": float(average_precision_score(y, score)) if both else None,
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])) if len(y) else None,
        "brier": float(brier_score_loss(y, score)) if len(y) else None,
        "threshold": float(threshold),
        "cost_per_row": binary_cost(y, score >= threshold, costs),
        "cost_per_row_at_0_5": binary_cost(y, score >= 0.5, costs),
        "act_rate": float(np.mean(score >= threshold)) if len(y) else 0.0,
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray, offset: float, costs: RegressionCosts) -> dict[str, Any]:
    return {
        "rows": int(len(y)),
        "rmse": float(np.sqrt(np.mean((y - pred) ** 2))),
        "mae": float(np.mean(np.abs(y - pred))),
        "offset": float(offset),
        "cost_per_row": regression_cost(y, pred + offset, costs),
        "cost_per_row_unadjusted": regression_cost(y, pred, costs),
    }
