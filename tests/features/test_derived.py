"""Derived features: every kind gives the same numbers through transform, transform_records and
transform_arrow; target encoding is out of fold on training rows; the JSON round-trips."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tidal.errors import StateError
from tidal.features import derived as D
from tidal.features import register_transform
from tidal.features.pipeline import FeaturePipeline

FEATURES = {"a": "numeric", "b": "numeric", "c": "categorical", "flag": "boolean", "n": "categorical"}


@pytest.fixture
def registry(monkeypatch):
    """A fresh registry of Python transforms for one test."""
    monkeypatch.setattr(D, "_REGISTRY", {})
    return D._REGISTRY


def _scaled_sum(a, c, flag, *, scale):
    """a * scale, plus 1 when c is 'u', plus flag; NaN stays NaN."""
    return a * scale + (c == "u") + np.nan_to_num(flag)


def _pipeline(registry) -> FeaturePipeline:
    register_transform("scaled_sum")(_scaled_sum)
    derived = {
        "log_a": D.Log("a"), "clip_a": D.Clip("a", 0.0, 5.0), "low_a": D.Clip("a", min=-0.5),
        "bucket_a": D.Bucketize("a", (0.0, 1.0, 10.0)), "ratio_ab": D.Ratio("a", "b"),
        "te_c": D.TargetEncoding("c", folds=3, smoothing=2.0), "te_n": D.TargetEncoding("n", smoothing=1.0),
        "py": D.python_transform("py", "scaled_sum", ["a", "c", "flag"], {"scale": 2.0})}
    train = {"c": ["u", "v", "u", "w", None, "u", "v", "w"], "n": [1, 2, 2, 3, 1, 1, 2, 3]}
    y = [1, 0, 1, 0, 1, 0, 0, 1]
    return FeaturePipeline(features=FEATURES, derived=derived).fit(train, target=y)


# rows with nulls, zeros, values at and below -1, bounds, unknown and missing categories
ROWS = {"a": [1.0, None, -1.0, -0.5, 0.0, 10.0, 3.0, float("nan"), 7.5, -3.0],
        "b": [2.0, 1.0, 0.0, None, 4.0, -2.0, 0.0, 1.0, 3.0, 0.5],
        "c": ["u", "v", None, "zzz", "w", "u", "v", None, "w", "new"],
        "flag": [True, False, None, True, False, None, True, False, True, False],
        "n": [1, 2, None, 9, 3, 1, 2, 3, None, 1]}


def _arrow_tables() -> list[pa.Table]:
    """The same rows as several Arrow typings: kernel paths (text, dictionary, integers) and fallbacks (floats)."""
    base = {"a": pa.array(ROWS["a"], pa.float64()), "b": pa.array(ROWS["b"], pa.float64()),
            "flag": pa.array(ROWS["flag"], pa.bool_())}
    return [pa.table({**base, "c": pa.array(ROWS["c"]), "n": pa.array(ROWS["n"], pa.int64())}),
            pa.table({**base, "c": pa.array(ROWS["c"]).dictionary_encode(), "n": pa.array(ROWS["n"], pa.float64())}),
            pa.table({**base, "c": pa.array(ROWS["c"], pa.large_string()),
                      "n": pa.array([None if v is None else str(v) for v in ROWS["n"]])})]


def test_every_kind_is_identical_on_every_path(registry):
    pipe = _pipeline(registry)
    n = len(ROWS["a"])
    records = [{k: v[i] for k, v in ROWS.items()} for i in range(n)]
    expected = pipe.transform(ROWS, n_rows=n)
    assert expected.shape == (n, len(FEATURES) + len(pipe.derived))
    np.testing.assert_array_equal(pipe.transform_records(records), expected)
    for table in _arrow_tables():
        np.testing.assert_array_equal(pipe.transform_arrow(table), expected)
    # a missing column is all-null on every path, and records missing the key too
    without_c = {k: v for k, v in ROWS.items() if k != "c"}
    expected = pipe.transform(without_c, n_rows=n)
    np.testing.assert_array_equal(pipe.transform_arrow(_arrow_tables()[0].drop_columns(["c"])), expected)
    np.testing.assert_array_equal(pipe.transform_records([{k: v for k, v in r.items() if k != "c"} for r in records]),
                                  expected)


def test_each_kind_computes_the_documented_values(registry):
    pipe = _pipeline(registry)
    X = pipe.transform(ROWS, n_rows=10)
    col = {name: X[:, j] for j, name in enumerate(pipe.output_names)}
    a = np.array(ROWS["a"], dtype=float)
    # log1p for a > -1, else missing
    np.testing.assert_array_equal(col["log_a"], np.where(a > -1, np.log1p(np.where(a > -1, a, 0)), np.nan))
    assert np.isnan(col["log_a"][[1, 2, 7, 9]]).all() and col["log_a"][3] == np.log1p(-0.5)
    np.testing.assert_array_equal(col["clip_a"], [1, np.nan, 0, 0, 0, 5, 3, np.nan, 5, 0])
    np.testing.assert_array_equal(col["low_a"], [1, np.nan, -0.5, -0.5, 0, 10, 3, np.nan, 7.5, -0.5])
    # the bucket above a bound holds the bound itself
    np.testing.assert_array_equal(col["bucket_a"], [2, np.nan, 0, 0, 1, 3, 2, np.nan, 2, 0])
    # missing when either side is missing or the denominator is 0
    np.testing.assert_array_equal(col["ratio_ab"], [0.5, np.nan, np.nan, np.nan, 0, -5, np.nan, np.nan, 2.5, -6])
    assert np.isnan(D.Ratio("a", "b").compute(np.array([1e308, -1e308]), np.array([1e-10, 1e-10]))).all()
    flag = np.nan_to_num(np.array(ROWS["flag"], dtype=float))
    np.testing.assert_array_equal(col["py"], a * 2 + (np.array(ROWS["c"], dtype=object) == "u") + flag)


def test_target_encoding_is_smoothed_toward_the_prior():
    y = np.array([1, 1, 0, 0, 0, 1, 0, 1], dtype=float)
    texts = ["u", "u", "u", "v", "v", None, None, "w"]
    te = D.TargetEncoding("c", smoothing=2.0).fit(texts, y)
    prior = y.mean()
    assert te.prior == prior
    assert dict(zip(te.categories, te.values)) == pytest.approx(
        {"u": (2 + 2 * prior) / 5, "v": (0 + 2 * prior) / 4, "w": (1 + 2 * prior) / 3})
    assert te.categories[0] == "u"  # most frequent first
    assert te.missing == pytest.approx((1 + 2 * prior) / 4)
    np.testing.assert_array_equal(te.compute(["unseen", None, "v"]), [prior, te.missing, te.values[1]])
    # without missing rows in training, a missing value gets the prior
    assert D.TargetEncoding("c").fit(["u", "v"], np.array([1.0, 0.0])).missing == 0.5


def test_target_encoding_matches_scikit_learn():
    from sklearn.preprocessing import TargetEncoder

    rng = np.random.default_rng(1)
    cats = rng.choice(list("abcdefg"), size=500)
    y = (rng.random(500) < np.where(cats < "d", 0.7, 0.2)).astype(float)
    te = D.TargetEncoding("c", smoothing=20.0).fit(list(cats), y)
    sk = TargetEncoder(smooth=20.0, target_type="continuous").fit(cats.reshape(-1, 1), y)
    ours = dict(zip(te.categories, te.values))
    assert {c: ours[c] for c in sk.categories_[0]} == pytest.approx(dict(zip(sk.categories_[0], sk.encodings_[0])))


def test_out_of_fold_on_training_rows_full_fit_for_new_rows():
    rng = np.random.default_rng(3)
    n = 400
    cats = rng.choice(["p", "q", "r", "s"], size=n).astype(object)
    cats[rng.random(n) < 0.05] = None
    y = (rng.random(n) < np.where(cats == "p", 0.8, 0.3)).astype(float)
    pipe = FeaturePipeline(features={"c": "categorical"},
                           derived={"te": D.TargetEncoding("c", folds=4, smoothing=5.0)})
    fitted = pipe.fit({"c": list(cats)}, target=y)
    oof = fitted.out_of_fold({"c": list(cats)}, y, seed=7)
    assert list(oof) == [1]  # the output column of the encoding
    full = fitted.transform({"c": list(cats)})[:, 1]
    assert not np.allclose(oof[1], full)  # training rows do not see their own label
    # each row's value is the encoding fitted on the other three folds
    fold = np.empty(n, dtype=int)
    fold[np.random.default_rng(7).permutation(n)] = np.arange(n) % 4
    for k in range(4):
        rest = fold != k
        again = D.TargetEncoding("c", smoothing=5.0).fit(list(cats[rest]), y[rest])
        np.testing.assert_allclose(oof[1][fold == k], again.compute(list(cats[fold == k])), rtol=1e-12)
    # deterministic by seed; new rows get the full fit
    np.testing.assert_array_equal(fitted.out_of_fold({"c": list(cats)}, y, seed=7)[1], oof[1])
    new = fitted.transform({"c": ["p", "q", None, "unknown"]})[:, 1]
    te = fitted.derived["te"]
    np.testing.assert_array_equal(new, [te.values[te.categories.index("p")], te.values[te.categories.index("q")],
                                        te.missing, te.prior])


def test_fitting_a_target_encoding_needs_the_target():
    pipe = FeaturePipeline(features={"c": "categorical"}, derived={"te": D.TargetEncoding("c")})
    with pytest.raises(StateError, match="needs the target"):
        pipe.fit({"c": ["u"]})


def test_json_round_trip_keeps_every_number(registry):
    pipe = _pipeline(registry)
    text = pipe.to_json()
    data = json.loads(text)
    assert data["format_version"] == 2
    assert [n for n, _ in data["derived"]] == list(pipe.derived)
    assert dict(data["derived"])["py"]["sha256"] == D.source_sha256(_scaled_sum)
    assert data["output_names"][-len(pipe.derived):] == list(pipe.derived)
    again = FeaturePipeline.from_json(text)
    assert again.output_names == pipe.output_names and again.to_json() == text
    for table in _arrow_tables():
        np.testing.assert_array_equal(again.transform_arrow(table), pipe.transform_arrow(table))


def test_format_1_still_loads():
    old = json.dumps({"format_version": 1, "features": [["a", "numeric"], ["c", "categorical"]],
                      "vocabularies": {"c": ["u", "v"]}, "output_names": ["a", "c"], "categorical_indices": [1]})
    pipe = FeaturePipeline.from_json(old)
    assert pipe.derived == {} and pipe.output_names == ["a", "c"]
    np.testing.assert_array_equal(pipe.transform({"a": [1.0, None], "c": ["v", "x"]}), [[1, 1], [np.nan, 2]])
    with pytest.raises(Exception, match="unsupported pipeline format 99"):
        FeaturePipeline.from_json(json.dumps({"format_version": 99}))


def test_python_transform_must_return_one_float_per_row(registry):
    from tidal.errors import DataValidationError

    @register_transform("two_columns")
    def two_columns(a):
        return np.stack([a, a], axis=1)

    @register_transform("words")
    def words(a):
        return np.array(["x"] * len(a))

    for name in ("two_columns", "words"):
        pipe = FeaturePipeline(features={"a": "numeric"}, derived={"bad": D.python_transform("bad", name, ["a"], {})})
        with pytest.raises(DataValidationError, match=f"transform '{name}' \\(derived feature 'bad'\\)"):
            pipe.transform({"a": [1.0, 2.0]})
    assert pipe.transform({"a": []}).shape == (0, 2)  # the function is not called on no rows

    @register_transform("reciprocal")
    def reciprocal(a):
        return 1.0 / a

    pipe = FeaturePipeline(features={"a": "numeric"}, derived={"r": D.python_transform("r", "reciprocal", ["a"], {})})
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(pipe.transform({"a": [0.0, 2.0]})[:, 1], [np.nan, 0.5])  # inf is missing


def test_a_transform_may_not_change_the_models_columns(registry):
    @register_transform("in_place")
    def in_place(a):
        a[:] = 0.0
        return a

    pipe = FeaturePipeline(features={"a": "numeric"}, derived={"z": D.python_transform("z", "in_place", ["a"], {})})
    np.testing.assert_array_equal(pipe.transform_records([{"a": 3.0}]), [[3.0, 0.0]])
    np.testing.assert_array_equal(pipe.transform_arrow(pa.table({"a": [3.0]})), [[3.0, 0.0]])
