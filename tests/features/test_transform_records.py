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
