"""Drift statistics against reference profiles: PSI, KS and chi-square."""

from __future__ import annotations

import numpy as np
import pytest

from tidal.data.profile import BINS, SAMPLE_SIZE, build_profile, categorical_profile, numeric_profile
from tidal.monitoring.drift import categorical_drift, numeric_drift, psi

THRESHOLDS = {"psi_threshold": 0.2, "p_value": 0.01}
MIX = {"a": 0.5, "b": 0.3, "c": 0.2}


def _categories(rng, shares: dict[str, float], n: int) -> list[str]:
    return rng.choice(list(shares), size=n, p=list(shares.values())).tolist()


def test_numeric_profile_has_deciles_shares_and_a_bounded_sample():
    values = np.random.default_rng(0).normal(10, 2, 5000)
    prof = numeric_profile(np.append(values, [np.nan] * 50))
    assert prof["kind"] == "numeric"
    assert len(prof["edges"]) == BINS - 1
    assert np.all(np.diff(prof["edges"]) > 0)
    assert len(prof["shares"]) == BINS
    assert sum(prof["shares"]) == pytest.approx(1.0)
    assert all(s == pytest.approx(0.1, abs=0.01) for s in prof["shares"])
    assert len(prof["sample"]) == SAMPLE_SIZE
    assert prof["null_share"] == pytest.approx(50 / 5050)
    assert prof["mean"] == pytest.approx(10, abs=0.1) and prof["std"] == pytest.approx(2, abs=0.1)


def test_categorical_and_combined_profiles():
    prof = categorical_profile(["a", "b", "a", None])
    assert prof == {"kind": "categorical", "shares": {"a": 0.5, "b": 0.25, "<null>": 0.25}}
    both = build_profile({"n": np.arange(20.0), "c": ["x"] * 20, "flag": [True, False] * 10, "ts": [1] * 20},
                         {"n": "numeric", "c": "categorical", "flag": "boolean", "ts": "datetime", "gone": "numeric"})
    assert set(both) == {"n", "c", "flag"}
    assert both["flag"]["shares"] == {"True": 0.5, "False": 0.5}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_distribution_is_not_drifted(seed):
    ref = numeric_profile(np.random.default_rng(0).normal(0, 1, 5000))
    current = np.random.default_rng(seed).normal(0, 1, 1000)
    out = numeric_drift(ref, current, **THRESHOLDS)
    assert out["drifted"] is False
    assert out["psi"] < 0.05
    assert out["ks_p"] > 0.01
    assert out["n"] == 1000


def test_shifted_numeric_sample_is_drifted():
    ref = numeric_profile(np.random.default_rng(0).normal(0, 1, 5000))
    current = np.random.default_rng(1).normal(1.5, 1, 1000)
    out = numeric_drift(ref, current, **THRESHOLDS)
    assert out["drifted"] is True
    assert out["psi"] > 0.2
    assert out["ks_p"] < 0.01
    assert out["mean"] == pytest.approx(1.5, abs=0.1)
    assert out["ref_mean"] == pytest.approx(0, abs=0.05)


def test_small_shift_is_caught_by_ks_even_below_the_psi_threshold():
    ref = numeric_profile(np.random.default_rng(0).normal(0, 1, 5000))
    current = np.random.default_rng(1).normal(0.3, 1, 3000)
    out = numeric_drift(ref, current, **THRESHOLDS)
    assert out["psi"] < 0.2
    assert out["ks_p"] < 0.01
    assert out["drifted"] is True


def test_numeric_drift_ignores_missing_values_and_handles_empty_input():
    ref = numeric_profile(np.random.default_rng(0).normal(0, 1, 5000))
    current = np.append(np.random.default_rng(1).normal(0, 1, 500), [np.nan] * 500)
    out = numeric_drift(ref, current, **THRESHOLDS)
    assert out["n"] == 500 and out["drifted"] is False
    empty = numeric_drift(ref, np.array([np.nan, np.nan]), **THRESHOLDS)
    assert empty == {"kind": "numeric", "n": 0, "drifted": False, "psi": None, "ks_p": None}


def test_same_category_mix_is_not_drifted():
    ref = categorical_profile(_categories(np.random.default_rng(0), MIX, 5000))
    out = categorical_drift(ref, _categories(np.random.default_rng(1), MIX, 1000), **THRESHOLDS)
    assert out["drifted"] is False
    assert out["chi2_p"] > 0.01
    assert out["psi"] < 0.05
    assert out["unseen"] == {}


def test_changed_category_mix_is_drifted_by_chi_square():
    ref = categorical_profile(_categories(np.random.default_rng(0), MIX, 5000))
    current = _categories(np.random.default_rng(1), {"a": 0.35, "b": 0.3, "c": 0.35}, 1000)
    out = categorical_drift(ref, current, **THRESHOLDS)
    assert out["drifted"] is True
    assert out["chi2_p"] < 0.01
    assert out["n"] == 1000


def test_unseen_categories_are_reported():
    ref = categorical_profile(_categories(np.random.default_rng(0), MIX, 5000))
    current = _categories(np.random.default_rng(1), MIX, 900) + ["zzz"] * 60 + [None] * 40
    out = categorical_drift(ref, current, **THRESHOLDS)
    assert out["unseen"] == {"zzz": 60, "<null>": 40}
    assert out["drifted"] is True


def test_categorical_drift_of_nothing_is_not_drifted():
    out = categorical_drift(categorical_profile(["a"]), [], **THRESHOLDS)
    assert out["n"] == 0 and out["drifted"] is False


def test_psi_of_identical_shares_is_zero():
    shares = np.array([0.1, 0.2, 0.3, 0.4])
    assert psi(shares, shares) == pytest.approx(0.0, abs=1e-12)
    assert psi(shares * 7, shares) == pytest.approx(0.0, abs=1e-12)  # counts or shares alike
    with_empty_bin = np.array([0.0, 0.5, 0.5])
    assert psi(with_empty_bin, with_empty_bin) == pytest.approx(0.0, abs=1e-12)


def test_psi_is_positive_symmetric_and_grows_with_the_change():
    base = np.array([0.25, 0.25, 0.25, 0.25])
    small = np.array([0.3, 0.25, 0.25, 0.2])
    large = np.array([0.7, 0.1, 0.1, 0.1])
    assert 0 < psi(base, small) < psi(base, large)
    assert psi(base, large) == pytest.approx(psi(large, base))
    expected = sum((a - e) * np.log(a / e) for e, a in zip(base, large))
    assert psi(base, large) == pytest.approx(expected)
    # an emptied bin is finite, not infinite
    assert np.isfinite(psi(base, np.array([0.0, 1 / 3, 1 / 3, 1 / 3])))
