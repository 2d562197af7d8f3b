"""Reference profiles: a JSON summary of trusted data that later data is compared with.

A numeric column keeps decile edges, the share of rows in each bin and a sample (for KS);
a categorical or boolean column keeps the share of each value. Stored in the model bundle
as JSON, so monitoring needs neither the training data nor a pickle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

SAMPLE_SIZE = 2000
BINS = 10


def numeric_profile(values: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"kind": "numeric", "edges": [], "shares": [], "sample": [], "null_share": 1.0}
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, BINS + 1)[1:-1]))
    shares = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1) / finite.size
    rng = np.random.default_rng(seed)
    sample = finite if finite.size <= SAMPLE_SIZE else rng.choice(finite, SAMPLE_SIZE, replace=False)
    return {"kind": "numeric", "edges": edges.tolist(), "shares": shares.tolist(),
            "sample": np.round(sample, 6).tolist(), "null_share": float(1 - finite.size / values.size),
            "mean": float(finite.mean()), "std": float(finite.std())}


def categorical_profile(values: Sequence[Any]) -> dict[str, Any]:
    text = ["<null>" if v is None else str(v) for v in values]
    counts = Counter(text)
    n = max(len(text), 1)
    return {"kind": "categorical", "shares": {k: c / n for k, c in counts.most_common()}}


def build_profile(columns: dict[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """Profile every column whose kind is numeric, boolean or categorical (datetimes are skipped)."""
    out = {}
    for name, kind in kinds.items():
        if name not in columns:
            continue
        if kind == "numeric":
            out[name] = numeric_profile(columns[name])
        elif kind in ("categorical", "boolean"):
            out[name] = categorical_profile(columns[name])
    return out
