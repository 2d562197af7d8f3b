"""Arrow kernels for :meth:`FeaturePipeline.transform_arrow`: whole columns at a time, no Python loop.

Each function returns the same float64 numbers as the pipeline's per-value rules (the online
path) for the column types it handles, and ``None`` for the others, which then go through the
per-value rules. The parity tests in ``tests/features/test_pipeline.py`` hold both paths to
identical matrices.

- numbers: any integer, floating, decimal or boolean column, nulls as NaN;
- category codes: text, integer and boolean columns (and dictionaries of them), looked up in
  the vocabulary with ``index_in``; a null is NaN, a value outside the vocabulary the unknown
  bucket ``len(vocabulary)``. Floating columns are left to the per-value rule (``1.0`` is
  the category ``"1"`` there, which Arrow's float-to-text cast does not promise);
- datetime parts: timestamp and date columns, read in UTC (a naive timestamp is UTC).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _plain(col: Any) -> Any:
    """The column without dictionary encoding, as one ChunkedArray."""
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col


def _floats(col: Any) -> np.ndarray:
    """A numeric Arrow column as float64 with NaN for nulls."""
    col = col.cast(pa.float64())
    if col.num_chunks == 1 and col.null_count == 0:
        return col.chunk(0).to_numpy(zero_copy_only=False)
    return col.to_numpy()  # nulls come out as NaN for floating columns


def numbers(col: Any) -> np.ndarray | None:
    col = _plain(col)
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t):
        return _floats(col)
    return None


def codes(col: Any, vocabulary: Sequence[str]) -> np.ndarray | None:
    col = _plain(col)
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = col
    elif pa.types.is_string_view(t):
        text = col.cast(pa.large_string())
    elif pa.types.is_integer(t):
        text = col.cast(pa.string())  # an integer's text is Python's str(int)
    elif pa.types.is_boolean(t):
        text = pc.if_else(col, "true", "false")  # the per-value rule's spelling of booleans
    else:
        return None
    index = pc.index_in(text, value_set=pa.array(list(vocabulary), type=text.type))
    out = _floats(pc.fill_null(index, len(vocabulary)))  # not in the vocabulary: the unknown bucket
    if text.null_count:
        out = np.where(pc.is_null(text).to_numpy(zero_copy_only=False), np.nan, out)
    return out


def datetime_parts(col: Any, parts: Sequence[str]) -> np.ndarray | None:
    col = _plain(col)
    t = col.type
    if pa.types.is_timestamp(t):
        # tz-aware values are stored as UTC instants and naive ones are read as UTC: only the label changes
        utc = col.cast(pa.timestamp(t.unit, tz="UTC"))
    elif pa.types.is_date(t):
        utc = col.cast(pa.timestamp("s", tz="UTC"))
    else:
        return None
    kernels = {"hour": pc.hour, "dayofweek": pc.day_of_week, "month": pc.month}  # day_of_week: Monday is 0
    out = np.empty((len(utc), len(parts)))
    for j, part in enumerate(parts):
        out[:, j] = _floats(kernels[part](utc))
    return out
