"""Drift statistics against a reference profile: PSI and KS for numbers, chi-square for categories."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

EPS = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two share vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=float), EPS, None)
    a = np.clip(np.asarray(actual, dtype=float), EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_drift(ref: dict[str, Any], values: np.ndarray, *, psi_threshold: float, p_value: float) -> dict[str, Any]:
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0 or not ref.get("edges") and not ref.get("sample"):
        return {"kind": "numeric", "n": int(finite.size), "drifted": False, "psi": None, "ks_p": None}
    edges = np.asarray(ref["edges"])
    shares = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=len(edges) + 1) / finite.size
    value_psi = psi(np.asarray(ref["shares"]), shares)
    ks = stats.ks_2samp(np.asarray(ref["sample"]), finite)
    drifted = value_psi > psi_threshold or ks.pvalue < p_value
    return {"kind": "numeric", "n": int(finite.size), "psi": value_psi, "ks_stat": float(ks.statistic),
            "ks_p": float(ks.pvalue), "mean": float(finite.mean()), "ref_mean": ref.get("mean"),
            "drifted": bool(drifted)}


def categorical_drift(ref: dict[str, Any], values: Sequence[Any], *, psi_threshold: float,
                      p_value: float) -> dict[str, Any]:
    text = ["<null>" if v is None else str(v) for v in values]
    if not text:
        return {"kind": "categorical", "n": 0, "drifted": False, "psi": None, "chi2_p": None}
    ref_shares: dict[str, float] = ref["shares"]
    counts = Counter(text)
    cats = list(ref_shares) + sorted(set(counts) - set(ref_shares))
    observed = np.array([counts.get(c, 0) for c in cats], dtype=float)
    expected_share = np.array([ref_shares.get(c, 0.0) for c in cats]) + EPS
    expected_share /= expected_share.sum()
    chi = stats.chisquare(observed, expected_share * observed.sum())
    value_psi = psi(expected_share, observed / observed.sum())
    unseen = {c: int(counts[c]) for c in cats if c not in ref_shares}
    return {"kind": "categorical", "n": len(text), "psi": value_psi, "chi2": float(chi.statistic),
            "chi2_p": float(chi.pvalue), "unseen": unseen, "drifted": bool(chi.pvalue < p_value)}
