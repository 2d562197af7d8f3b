"""Class imbalance: how much a positive row weighs in training (binary tasks).

``training.imbalance`` chooses:

- ``auto`` (default): when positives are under ``RARE_POSITIVE_RATE`` of the training rows,
  each weighs ``sqrt(negatives / positives)`` (about 24 on the credit-card fraud data, 0.17%
  positives); otherwise nothing is weighted.
- ``balanced``: each positive weighs ``negatives / positives`` (both classes weigh the same).
- ``none``: nothing is weighted.

The weights go on the training rows *and* on the validation rows, so that early stopping
watches the same weighted log-loss the booster minimises (with an unweighted validation
loss, a weighted model looks worse at every round as its scores rise, and stops after a
handful of rounds). A weighted model's scores are not calibrated probabilities; decisions
stay right because the cost-optimal threshold is chosen on the validation rows by their
real (unweighted) cost. When ``params`` already set ``scale_pos_weight`` or
``is_unbalance``, the user's choice stands and nothing more is weighted.
Measurements behind the choice: docs/decisions.md ("Imbalance").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RARE_POSITIVE_RATE = 0.05
_USER_KEYS = ("scale_pos_weight", "is_unbalance", "is_unbalanced", "unbalance_sets")


def choose(mode: str, y_train: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    """The weighting of positives for ``mode`` on these training labels, as recorded in the run."""
    pos = int(np.sum(y_train == 1))
    neg = int(len(y_train) - pos)
    rate = pos / max(len(y_train), 1)
    choice: dict[str, Any] = {"mode": mode, "positive_rate": rate, "positive_weight": 1.0}
    user = [k for k in _USER_KEYS if params.get(k) not in (None, False)]
    if user:
        return {**choice, "weighting": "params", "reason": f"set in training.params ({', '.join(user)})"}
    if pos == 0 or neg == 0 or mode == "none" or (mode == "auto" and rate >= RARE_POSITIVE_RATE):
        reason = ("imbalance: none" if mode == "none" else
                  f"positives are {rate:.2%} of the training rows (>= {RARE_POSITIVE_RATE:.0%})")
        return {**choice, "weighting": "none", "reason": reason}
    if mode == "balanced":
        return {**choice, "weighting": "balanced", "positive_weight": neg / pos,
                "reason": "imbalance: balanced (negatives / positives)"}
    return {**choice, "weighting": "sqrt", "positive_weight": math.sqrt(neg / pos),
            "reason": f"positives are {rate:.2%} of the training rows (< {RARE_POSITIVE_RATE:.0%}): "
                      "sqrt(negatives / positives)"}


def sample_weights(y: np.ndarray, choice: dict[str, Any] | None) -> np.ndarray | None:
    """Per-row weights (positives weigh ``positive_weight``), or None when nothing is weighted."""
    if not choice or choice["positive_weight"] == 1.0:
        return None
    return np.where(y == 1, float(choice["positive_weight"]), 1.0)
