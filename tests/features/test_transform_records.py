"""transform_records (the online path: one conversion for the numbers, a preallocated matrix)
gives exactly what transform's per-column rules give, on odd values too."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from tidal.errors import DataValidationError
from tidal.features.pipeline import FeaturePipeline

PIPE = FeaturePipeline(features={"a": "numeric", "c": "categorical", "b": "boolean", "t": "datetime",
                                 "x": "numeric"}).fit({"a": [1.0], "c": ["u", "v", "u"], "b": [True], "t": [None],
                                                       "x": [1.0]})
VALUES = {"a": [1.0, None, 3, "1.5", float("nan"), True, 10**20, "nan"],
          "c": ["u", "w", None, 1.0, True, "v", float("nan"), 2],
          "b": [True, False, None, 1, 0, 1.0, None, "1"],
          "t": ["2024-01-02T03:04:05Z", None, "bad", datetime(2024, 5, 6, 7, tzinfo=timezone.utc), "2024-01-02",
                None, None, "2024-03-01T00:00:00+05:00"],
          "x": [0.1, 2.0, None, 4, 5, 6, 7, 8]}


def test_records_give_what_the_column_rules_give():
    records = [{name: values[i] for name, values in VALUES.items()} for i in range(8)]
    del records[3]["x"]  # a missing key is null
    columns = {name: [r.get(name) for r in records] for name in PIPE.features}
    np.testing.assert_array_equal(PIPE.transform_records(records), PIPE.transform(columns, n_rows=8))
    only_numbers = FeaturePipeline(features={"a": "numeric", "b": "boolean"})
    np.testing.assert_array_equal(only_numbers.transform_records([{"a": 1, "b": None}, {"b": True}]),
                                  [[1.0, np.nan], [np.nan, 1.0]])


def test_empty_and_bad_records():
    assert PIPE.transform_records([]).shape == (0, len(PIPE.output_names))
    with pytest.raises(DataValidationError, match="'x'"):
        PIPE.transform_records([{"a": 1.0, "x": "abc"}])


def test_rows_give_what_the_column_rules_give():
    """transform_rows: a numeric model's rows read in one pass; anything else through the columns."""
    from tidal.serving.columns import RecordColumns

    numbers = FeaturePipeline(features={"a": "numeric", "b": "boolean", "x": "numeric"})
    rows = [(1.0, True, None), (3, None, 2.5), (float("nan"), False, 10**20), ("1.5", 1, 0.0)]
    batch = RecordColumns.from_rows(["a", "b", "x"], rows)
    fast = numbers.transform_rows(batch.names, batch.rows, lambda: batch.columns)
    np.testing.assert_array_equal(fast, numbers.transform(batch.columns, n_rows=4))
    assert fast.shape == (4, 3) and np.isnan(fast[0, 2]) and fast[3, 0] == 1.5
    # other fields, another order, other kinds: the column rules, the same matrix
    for names, pipe in ((["x", "a", "b"], numbers), (list(VALUES), PIPE)):
        recs = [{name: VALUES[name][i] for name in VALUES} for i in range(8)]
        batch = RecordColumns.from_rows(names, [tuple(r[n] for n in names) for r in recs])
        want = pipe.transform({n: [r[n] for r in recs] for n in pipe.features}, n_rows=8)
        np.testing.assert_array_equal(pipe.transform_rows(batch.names, batch.rows, lambda: batch.columns), want)
    bad = RecordColumns.from_rows(["a", "b", "x"], [(1.0, True, 2.0), (1.0, True, "abc")])
    with pytest.raises(DataValidationError, match="'x'"):
        numbers.transform_rows(bad.names, bad.rows, lambda: bad.columns)


def test_record_columns_transpose_as_far_as_asked():
    from tidal.serving.columns import RecordColumns

    rows = [(1, "a", None), (2, "b", True)]
    batch = RecordColumns.from_rows(["n", "s", "f"], rows)
    assert batch.column("s") == ("a", "b") and batch.column("missing") == (None, None)
    assert batch._columns == {"s": ("a", "b")}  # only what was asked
    assert batch.columns == {"n": (1, 2), "s": ("a", "b"), "f": (None, True)}
    assert list(batch) == [{"n": 1, "s": "a", "f": None}, {"n": 2, "s": "b", "f": True}]
    batch.replace("n", [10, 20])
    assert batch.rows is None and batch.column("n") == [10, 20] and batch[1] == {"n": 20, "s": "b", "f": True}
