"""FeaturePipeline: one fitted transform, identical on the online (records) and offline (Arrow) paths."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from tidal.errors import DataValidationError
from tidal.features.pipeline import DATETIME_PARTS, FeaturePipeline

# declared deliberately out of alphabetical order: the matrix follows the declaration
KINDS = {"plan": "categorical", "charges": "numeric", "senior": "boolean", "signup": "datetime",
         "area": "categorical"}

TRAIN = {
    "plan": ["basic", "pro", "basic", None, "max", "pro", "basic"],
    "area": ["n", "s", "s", "e", "s", None, "n"],
}

UTC = timezone.utc
ROWS = [  # (plan, charges, senior, signup, area)
    ("basic", 29.85, True, datetime(2024, 3, 15, 13, 45, tzinfo=UTC), "n"),
    ("pro", None, False, None, "s"),
    ("unseen", 70.5, None, datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC), None),
    (None, 0.0, True, datetime(2024, 7, 1, 0, 0, tzinfo=UTC), "zzz"),
    ("max", 1e6, False, datetime(2020, 2, 29, 8, 30, tzinfo=UTC), "e"),
]


@pytest.fixture
def fitted() -> FeaturePipeline:
    return FeaturePipeline(features=KINDS).fit(TRAIN)


def _records(iso: bool) -> list[dict]:
    out = []
    for plan, charges, senior, signup, area in ROWS:
        when = signup.isoformat().replace("+00:00", "Z") if (iso and signup) else signup
        out.append({"plan": plan, "charges": charges, "senior": senior, "signup": when, "area": area})
    return out


def _arrow() -> pa.Table:
    cols = list(zip(*ROWS))
    return pa.table({
        "plan": pa.array(cols[0], pa.string()),
        "charges": pa.array(cols[1], pa.float64()),
        "senior": pa.array(cols[2], pa.bool_()),
        "signup": pa.array(cols[3], pa.timestamp("us", tz="UTC")),
        "area": pa.array(cols[4], pa.string()),
    })


def test_fit_learns_vocabularies_most_frequent_first(fitted):
    # basic x3, pro x2, max x1; ties broken alphabetically; nulls never enter the vocabulary
    assert fitted.vocabularies == {"plan": ["basic", "pro", "max"], "area": ["s", "n", "e"]}
    assert set(fitted.vocabularies) == {"plan", "area"}  # only categorical features


def test_fit_returns_new_pipeline_and_leaves_the_template_unfitted():
    template = FeaturePipeline(features=KINDS)
    fitted = template.fit(TRAIN)
    assert fitted is not template
    assert template.vocabularies == {}
    assert fitted.features == template.features


def test_output_layout(fitted):
    assert fitted.output_names == ["plan", "charges", "senior", "signup__hour", "signup__dayofweek",
                                   "signup__month", "area"]
    assert fitted.categorical_indices == [0, 6]


def test_records_and_arrow_give_identical_matrices(fitted):
    from_records = fitted.transform_records(_records(iso=False))
    from_iso_records = fitted.transform_records(_records(iso=True))  # JSON requests carry ISO text
    from_arrow = fitted.transform_arrow(_arrow())
    assert from_records.shape == (5, 7) and from_records.dtype == np.float64
    np.testing.assert_array_equal(from_records, from_arrow)
    np.testing.assert_array_equal(from_iso_records, from_arrow)


def test_transform_values(fitted):
    X = fitted.transform_records(_records(iso=True))
    plan, charges, senior, hour, dow, month, area = X.T
    # known codes, the unknown bucket (len(vocab)) and null as NaN
    np.testing.assert_array_equal(plan[[0, 1, 2, 4]], [0, 1, 3, 2])
    assert math.isnan(plan[3])
    np.testing.assert_array_equal(area[[0, 1, 3, 4]], [1, 0, 3, 2])
    assert math.isnan(area[2])
    np.testing.assert_array_equal(charges[[0, 2, 3, 4]], [29.85, 70.5, 0.0, 1e6])
    assert math.isnan(charges[1])
    np.testing.assert_array_equal(senior[[0, 1, 3, 4]], [1, 0, 1, 0])
    assert math.isnan(senior[2])
    assert np.isnan(X[1, 3:6]).all()  # a null timestamp gives null parts


def test_datetime_parts_for_known_timestamps():
    pipe = FeaturePipeline(features={"t": "datetime"})
    assert DATETIME_PARTS == ("hour", "dayofweek", "month")
    values = [
        "2024-03-15T13:45:00Z",  # a Friday
        datetime(2024, 3, 15, 13, 45, tzinfo=UTC),
        datetime(2024, 3, 15, 13, 45),  # naive is read as UTC
        "2024-03-15T15:45:00+02:00",  # same instant, another zone
        datetime(2024, 3, 15, 9, 45, tzinfo=timezone(timedelta(hours=-4))),
        np.datetime64("2024-03-15T13:45:00"),
        date(2023, 1, 1),  # a Sunday, midnight
        "not a date",
        None,
    ]
    X = pipe.transform({"t": values})
    for i in range(6):
        np.testing.assert_array_equal(X[i], [13, 4, 3], err_msg=f"value {values[i]!r}")
    np.testing.assert_array_equal(X[6], [0, 6, 1])
    assert np.isnan(X[7]).all() and np.isnan(X[8]).all()


def test_json_round_trip_preserves_order_and_output(fitted):
    text = fitted.to_json()
    data = json.loads(text)
    assert [n for n, _ in data["features"]] == list(KINDS)
    assert data["output_names"] == fitted.output_names
    restored = FeaturePipeline.from_json(text)
    assert list(restored.features.items()) == list(KINDS.items())
    assert restored.vocabularies == fitted.vocabularies
    assert restored.output_names == fitted.output_names
    assert restored.categorical_indices == fitted.categorical_indices
    np.testing.assert_array_equal(restored.transform_arrow(_arrow()), fitted.transform_arrow(_arrow()))
    np.testing.assert_array_equal(restored.transform_records(_records(iso=True)),
                                  fitted.transform_records(_records(iso=True)))
    assert restored.to_json() == text


def test_from_json_refuses_unknown_format(fitted):
    data = json.loads(fitted.to_json())
    data["format_version"] = 99
    with pytest.raises(DataValidationError, match="unsupported pipeline format"):
        FeaturePipeline.from_json(json.dumps(data))


def test_missing_columns_are_all_null(fitted):
    X = fitted.transform_records([{"charges": 5.0}, {}])
    assert X.shape == (2, 7)
    assert X[0, 1] == 5.0
    assert np.isnan(np.delete(X[0], 1)).all() and np.isnan(X[1]).all()
    table = pa.table({"charges": pa.array([5.0, None])})
    np.testing.assert_array_equal(fitted.transform_arrow(table), X)


def test_category_text_is_the_same_for_ints_floats_and_bools():
    pipe = FeaturePipeline(features={"code": "categorical"}).fit({"code": [1, 1, 2, True]})
    assert pipe.vocabularies["code"] == ["1", "2", "true"]
    from_records = pipe.transform_records([{"code": 1.0}, {"code": "2"}, {"code": 3}, {"code": True}])
    np.testing.assert_array_equal(from_records[:, 0], [0, 1, 3, 2])
    table = pa.table({"code": pa.array([1, 2, 3, None], pa.int64())})
    np.testing.assert_array_equal(pipe.transform_arrow(table)[:3, 0], [0, 1, 3])


def test_text_in_numeric_feature_is_a_validation_error(fitted):
    with pytest.raises(DataValidationError, match="charges"):
        fitted.transform_records([{"charges": "abc"}])


def test_from_spec_uses_spec_order(churn_spec):
    pipe = FeaturePipeline.from_spec(churn_spec)
    assert list(pipe.features) == list(churn_spec.features)
    assert pipe.features["SeniorCitizen"] == "boolean"
    assert pipe.categorical_indices == [i for i, f in enumerate(churn_spec.features.values())
                                        if f.type == "categorical"]


# the Arrow kernels of transform_arrow against the per-value rules of the online path ----------------------
def _as_records(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def _chunked(values: list, typ: pa.DataType) -> pa.ChunkedArray:
    """Two chunks, so that the kernels meet a multi-chunk column."""
    return pa.chunked_array([pa.array(values[:2], typ), pa.array(values[2:], typ)])


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string(), pa.string_view(), pa.dictionary(pa.int8(), pa.string())])
def test_arrow_category_codes_match_records_for_text_types(fitted, typ):
    values = ["basic", "unseen", None, "max", "", " basic", "pro"]
    if pa.types.is_dictionary(typ):
        column = pa.array(values, pa.string()).dictionary_encode()
    else:
        column = _chunked(values, typ)
    table = pa.table({"plan": column})
    np.testing.assert_array_equal(fitted.transform_arrow(table), fitted.transform_records(_as_records(table)))


@pytest.mark.parametrize("column", [
    pa.array([1, 2, 3, None, -1, 10**12], pa.int64()),
    pa.array([1, 2, 3, None, 0, 200], pa.uint8()),
    pa.array([True, False, None, True, True, False], pa.bool_()),
    pa.array([1.0, 2.5, None, float("nan"), 3.0, 1e20], pa.float64()),  # floats: the per-value rule
])
def test_arrow_category_codes_match_records_for_numbers_and_booleans(column):
    train = [1, 1, 2, True, 2.5, 3, 1e20, 0]
    pipe = FeaturePipeline(features={"code": "categorical"}).fit({"code": train})
    table = pa.table({"code": column})
    np.testing.assert_array_equal(pipe.transform_arrow(table), pipe.transform_records(_as_records(table)))


@pytest.mark.parametrize("column", [
    pa.array([1, None, -3, 2**40], pa.int64()),
    pa.array([1.5, None, float("nan"), -0.0], pa.float32()),
    pa.array([True, None, False, True], pa.bool_()),
    pa.array([1, None, 3, 4], pa.decimal128(10, 2)),
])
def test_arrow_numbers_match_records(column):
    pipe = FeaturePipeline(features={"x": "numeric"})
    table = pa.table({"x": column})
    from_records = pipe.transform_records([{"x": None if v is None else float(v)} for v in column.to_pylist()])
    np.testing.assert_array_equal(pipe.transform_arrow(table), from_records)


@pytest.mark.parametrize("column", [
    pa.array([datetime(2024, 3, 15, 13, 45), None, datetime(1969, 12, 31, 23, 59), datetime(2000, 2, 29)],
             pa.timestamp("us")),  # naive: read as UTC
    pa.array([datetime(2024, 3, 15, 13, 45, tzinfo=UTC), None, datetime(2024, 1, 1, tzinfo=UTC),
              datetime(2100, 12, 31, 23, tzinfo=UTC)], pa.timestamp("ms", tz="America/New_York")),
    pa.array([datetime(2024, 3, 15, 23, 30, tzinfo=UTC), None, datetime(1950, 6, 1, 6, tzinfo=UTC),
              datetime(2024, 12, 31, 23, 59, tzinfo=UTC)], pa.timestamp("s", tz="+05:30")),
    pa.array([date(2024, 3, 15), None, date(1970, 1, 1), date(2023, 12, 31)], pa.date32()),
    pa.array(["2024-03-15T13:45:00Z", None, "garbage", "2024-03-15T15:45:00+02:00"], pa.string()),  # text: per value
])
def test_arrow_datetime_parts_match_records(column):
    pipe = FeaturePipeline(features={"t": "datetime"})
    table = pa.table({"t": column})
    np.testing.assert_array_equal(pipe.transform_arrow(table), pipe.transform_records(_as_records(table)))


def test_arrow_and_records_match_on_a_random_mixed_table(fitted):
    rng = np.random.default_rng(11)
    n = 2000
    plans = np.array(["basic", "pro", "max", "other", None], dtype=object)
    table = pa.table({
        "plan": pa.array(rng.choice(plans, n), pa.string()),
        "charges": pa.array(np.where(rng.random(n) < 0.1, np.nan, rng.normal(50, 20, n))),
        "senior": pa.array([None if r < 0.1 else bool(r > 0.5) for r in rng.random(n)], pa.bool_()),
        "signup": pa.array((rng.integers(-2_000_000_000, 4_000_000_000, n) * 1_000_000), pa.timestamp("us", tz="UTC")),
        "area": pa.array(rng.choice(np.array(["n", "s", "e", "w", None], dtype=object), n), pa.string()),
    })
    np.testing.assert_array_equal(fitted.transform_arrow(table), fitted.transform_records(_as_records(table)))
