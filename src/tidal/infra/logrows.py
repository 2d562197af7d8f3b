"""Buffered log rows and their Arrow form: what a log buffer holds and what a sink commits.

A log buffer holds rows as tuples in its schema's column order and a large request's rows as
one :class:`Chunk` of columns (a numeric column may be :class:`NullableFloats`);
:func:`to_arrow` turns such a batch into one table, in the order the rows came. Both sinks
(:mod:`tidal.infra.logwriter`) call it: in the server's flush thread, or in the writer process.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa

SLAB = 4096  # values converted to Arrow by one call (one hold of the GIL)
ROWS_A_SLAB = 1024  # single rows transposed into columns (or packed for the writer process) at a time
_EPOCH, _MICROSECOND = datetime(1970, 1, 1, tzinfo=timezone.utc), timedelta(microseconds=1)


class NullableFloats:
    """A float64 column given as a NumPy array whose NaN are missing values (logged as null).

    A large request's numeric features are logged from the model's matrix this way: no Python
    float a value is kept alive until the flush (a column of them is a container the garbage
    collector walks value by value; a second's worth took 10-20 ms a collection).
    """

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: slice) -> "NullableFloats":
        return NullableFloats(self.values[index])


class Chunk:
    """Several rows as columns, in the schema's column order."""

    __slots__ = ("columns", "n")

    def __init__(self, columns: list[Sequence[Any]], n: int) -> None:
        self.columns = columns
        self.n = n


def rows_in(item: Any) -> int:
    """How many rows a buffered item holds: a chunk's, or 1 for a row."""
    return item.n if type(item) is Chunk else 1


def to_arrow(schema: pa.Schema, items: Sequence[Any]) -> pa.Table:
    """Buffered rows (tuples and chunks, in order) as an Arrow table of ``schema``, built column by column.

    It may run beside the event loop, so it never holds the GIL for long: the columns are
    gathered in Python loops (which hand the GIL over at the interpreter's switch interval) and
    each ``pa.array`` call converts at most :data:`SLAB` values (as ``zip(*rows)`` or
    ``from_pylist`` over the whole batch would not). Timestamps with a time zone go through
    integers (:func:`_micros`): pyarrow asks each datetime for its UTC offset, a Python call a
    value, which made the time column the longest hold of the GIL by far.
    """
    parts: list[list[Any] | Chunk] = []  # runs of single rows, and chunks, in order
    for item in items:
        if type(item) is Chunk:
            parts.append(item)
        elif parts and type(parts[-1]) is list:
            parts[-1].append(item)
        else:
            parts.append([item])
    per_column: list[list[pa.Array]] = [[] for _ in schema]
    for part in parts:
        if type(part) is Chunk:
            for j, f in enumerate(schema):
                per_column[j] += _arrays(part.columns[j], f.type)
            continue
        for start in range(0, len(part), ROWS_A_SLAB):  # rows turned into columns in C, a slab at a time
            for j, (values, f) in enumerate(zip(zip(*part[start:start + ROWS_A_SLAB]), schema)):
                per_column[j] += _arrays(values, f.type)
    columns = [arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays) if arrays else pa.array([], type=f.type)
               for arrays, f in zip(per_column, schema)]
    return pa.Table.from_arrays(columns, schema=schema)  # one array a column: the rows stay in order


def _arrays(values: Sequence[Any], kind: pa.DataType) -> list[pa.Array]:
    """``values`` as Arrow arrays of ``kind``, :data:`SLAB` values at a time."""
    if type(values) is NullableFloats:  # one conversion in C, NaN -> null
        return [pa.array(values.values, type=kind, from_pandas=True)]
    out = []
    for start in range(0, len(values), SLAB):
        slab = values[start:start + SLAB] if len(values) > SLAB else values
        micros = _micros(slab) if pa.types.is_timestamp(kind) and kind.tz is not None and kind.unit == "us" else None
        out.append(pa.array(slab, type=kind) if micros is None else pa.array(micros, type=pa.int64()).view(kind))
    return out


def _micros(values: Sequence[Any]) -> list[int | None] | None:
    """Microseconds since the epoch (UTC) of each datetime with a time zone, as pyarrow counts them
    (one subtraction per datetime object: a request's rows share one; an int is taken as already
    microseconds); None if any value is something else (a naive datetime, text), which is left
    to pyarrow."""
    out: list[int | None] = []
    seen: dict[int, int] = {}  # by identity: equal wall times in one zone may be different instants (fold)
    for value in values:
        if value is None or type(value) is int:  # an int is already microseconds since the epoch
            out.append(value)
            continue
        micros = seen.get(id(value))
        if micros is None:
            if type(value) is not datetime or value.utcoffset() is None:
                return None
            micros = seen[id(value)] = (value - _EPOCH) // _MICROSECOND
        out.append(micros)
    return out
