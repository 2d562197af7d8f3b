"""The linear baseline: what a simple model gets on the same rows, so the booster's gain is visible.

A scikit-learn LogisticRegression (binary) or Ridge (regression) is fitted on the same
pipeline matrix and split as the booster: numeric columns (and datetime parts) imputed with
the training medians and standardised; categorical codes one-hot encoded (a missing value is
its own category). It gets its own cost-optimal threshold (or offset) on the validation
rows, and its held-out metrics are stored in the bundle's metrics as ``baseline``. The
model itself is not kept. At most ``MAX_ROWS`` training rows are used, so the baseline
stays a small share of the training time on large data.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tidal.spec import Spec
from tidal.training import costs as C

MAX_ROWS = 100_000


def _model(spec: Spec, n_columns: int, categorical: list[int]) -> Any:
    numeric = [i for i in range(n_columns) if i not in set(categorical)]
    prep = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()),
         numeric),
        ("categorical", make_pipeline(SimpleImputer(strategy="constant", fill_value=-1.0, keep_empty_features=True),
                                      OneHotEncoder(handle_unknown="ignore")), categorical),
    ])
    if spec.task == "binary":
        return make_pipeline(prep, LogisticRegression(max_iter=300))
    return make_pipeline(prep, Ridge(alpha=1.0))


def fit_baseline(spec: Spec, X: np.ndarray, y: np.ndarray, split: Any, categorical: list[int]) -> dict[str, Any]:
    """Fit the baseline on ``split.train`` and return its held-out metrics (``test``) and how it was made."""
    started = time.perf_counter()
    train = split.train
    if len(train) > MAX_ROWS:
        train = np.sort(np.random.default_rng(spec.training.seed).choice(train, MAX_ROWS, replace=False))
    model = _model(spec, X.shape[1], categorical)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X[train], y[train])

    def predict(rows: np.ndarray) -> np.ndarray:
        if spec.task == "binary":
            return model.predict_proba(X[rows])[:, 1]
        return model.predict(X[rows])

    valid, test = predict(split.valid), predict(split.test)
    if spec.task == "binary":
        threshold = C.optimal_threshold(y[split.valid], valid, spec.binary_costs)
        metrics = C.binary_metrics(y[split.test], test, threshold, spec.binary_costs)
    else:
        offset = C.optimal_offset(y[split.valid], valid, spec.regression_costs)
        metrics = C.regression_metrics(y[split.test], test, offset, spec.regression_costs)
    name = "LogisticRegression" if spec.task == "binary" else "Ridge"
    return {"model": name, "train_rows": int(len(train)), "test": metrics,
            "fit_seconds": time.perf_counter() - started}
