"""The statistical batch checks on hand-made frames: near-duplicates with nulls, the sample a
large batch is judged on, and the reference's own rates computed once."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tidal.data import checks
from tidal.data.checks import CheckContext, _duplicate_share, check_duplicates, run_checks, statistics_rows
from tidal.data.reference import Reference, _profile
from tidal.spec import parse_spec

SPEC = parse_spec({"name": "t", "task": "binary", "target": "y", "positive_class": "1",
                   "features": {"a": {"type": "numeric"}, "b": {"type": "numeric"}, "c": {"type": "categorical"}}})


def _frame(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"a": rng.normal(0, 1, n), "b": rng.lognormal(3, 1, n),
                         "c": rng.choice(["x", "y", "z"], n).tolist(),
                         "y": np.where(rng.random(n) < 0.3, "1", "0").tolist()})


def _reference(rows: pl.DataFrame) -> Reference:
    return Reference(version=0, profile=_profile(rows, SPEC), sample=rows.tail(2000))


def test_rows_with_nulls_are_not_duplicates_of_each_other():
    # every row has a null somewhere, but no two rows are alike
    rows = pl.DataFrame({"a": [None, 1.0, 2.0, None, 5.0, 7.0], "b": [10.0, None, 30.0, 40.0, None, 60.0],
                         "c": ["x", "y", None, "z", "x", None], "y": ["0", "1", "0", "1", "0", "1"]})
    assert _duplicate_share(rows, SPEC) == 0.0


def test_a_null_matches_only_a_null():
    base = {"a": 1.0, "b": 10.0, "c": "x", "y": "0"}
    rows = pl.DataFrame([base, {**base, "b": None}, {**base, "b": None}, {**base, "c": None}],
                        schema={"a": pl.Float64, "b": pl.Float64, "c": pl.String, "y": pl.String})
    # row 2 repeats row 1 (null in the same place); a null never equals the value 10 or "x"
    assert _duplicate_share(rows, SPEC) == pytest.approx(1 / 4)


def test_near_duplicates_round_numbers_to_two_significant_digits():
    rows = pl.DataFrame({"a": [1.231, 1.234, 1.29, float("inf"), float("-inf")],
                         "b": [99.6, 100.0, 5.0, 5.0, 5.0], "c": ["x"] * 5, "y": ["0"] * 5})
    # 1.231 ~ 1.234 and 99.6 ~ 100 (rounded to 1.2 and 100); 1.29 rounds to 1.3; the infinities differ
    assert _duplicate_share(rows, SPEC) == pytest.approx(1 / 5)


def test_a_batch_with_nulls_in_many_rows_passes_the_duplicate_check():
    clean = _frame(3000, seed=1)
    u = pl.Series(np.random.default_rng(2).random(2000))
    batch = _frame(2000, seed=3).with_columns(  # 10% of rows miss a, another 10% miss b
        pl.when(u < 0.1).then(None).otherwise(pl.col("a")).alias("a"),
        pl.when((u >= 0.1) & (u < 0.2)).then(None).otherwise(pl.col("b")).alias("b"))
    ctx = CheckContext(spec=SPEC, reference=_reference(clean), sample_seed=0)
    [result] = check_duplicates(batch, ctx)
    assert result.passed, result.message
    assert result.value < 0.04  # the old key made every row with a null one key: about 0.2 here


def test_a_flood_of_copies_fails_the_duplicate_check():
    clean = _frame(3000, seed=1)
    batch = pl.concat([_frame(1800, seed=4), pl.concat([_frame(1, seed=5)] * 200)])
    [result] = check_duplicates(batch, CheckContext(spec=SPEC, reference=_reference(clean), sample_seed=0))
    assert not result.passed and result.value > 0.09


def test_a_large_batch_is_judged_on_a_random_sample_spread_over_all_of_it(monkeypatch):
    monkeypatch.setattr(checks, "STATISTICS_ROWS", 1000)
    batch = _frame(10_000, seed=6).with_row_index("i")
    rows = statistics_rows(batch, CheckContext(spec=SPEC, reference=None, sample_seed=1))
    assert rows.height == 1000 and rows["i"].n_unique() == 1000
    assert rows["i"].is_sorted()  # the batch's order is kept
    first_half = (rows["i"] < 5000).sum()
    assert 400 < first_half < 600
    again = statistics_rows(batch, CheckContext(spec=SPEC, reference=None, sample_seed=1))
    other = statistics_rows(batch, CheckContext(spec=SPEC, reference=None, sample_seed=2))
    assert again["i"].equals(rows["i"]) and not other["i"].equals(rows["i"])


def test_a_flood_at_the_end_of_a_large_batch_is_caught_by_the_sample(monkeypatch):
    monkeypatch.setattr(checks, "STATISTICS_ROWS", 2000)
    clean = _frame(5000, seed=7)
    batch = _frame(20_000, seed=8)
    flood = batch.tail(2000).with_columns(pl.col("b") * 1000)  # the last 10% of rows, far out of range
    batch = pl.concat([batch.head(18_000), flood])
    results = {r.check: r for r in run_checks(batch, CheckContext(spec=SPEC, reference=_reference(clean)))}
    outliers = results["outliers"]
    assert not outliers.passed and 0.07 < outliers.value < 0.13
    seed = int(outliers.message.rsplit("seed ", 1)[1].rstrip(")"))
    assert "random 2,000 of the batch's 20,000 rows" in outliers.message
    replay = {r.check: r for r in run_checks(batch, CheckContext(spec=SPEC, reference=_reference(clean),
                                                                  sample_seed=seed))}
    assert replay["outliers"].value == outliers.value
    assert replay["feature_shift:b"].value == results["feature_shift:b"].value


def test_a_small_batch_is_judged_whole():
    clean = _frame(3000, seed=1)
    batch = _frame(600, seed=9)
    results = run_checks(batch, CheckContext(spec=SPEC, reference=_reference(clean)))
    assert {r.check for r in results} >= {"duplicates", "outliers", "label_shift"}
    assert not any("random" in r.message for r in results)


def test_the_reference_rates_are_computed_once_per_reference():
    reference = _reference(_frame(3000, seed=1))
    calls = []
    for _ in range(3):
        assert reference.own_rate("duplicates@500", lambda: calls.append(1) or 0.25) == 0.25
    assert calls == [1]
    ctx = CheckContext(spec=SPEC, reference=reference, sample_seed=0)
    first = run_checks(_frame(800, seed=2), ctx)
    assert {"outliers", "duplicates@800"} <= set(reference._rates)
    assert [r.message for r in run_checks(_frame(800, seed=2), ctx)] == [r.message for r in first]
