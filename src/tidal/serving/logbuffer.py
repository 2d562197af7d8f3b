"""A bounded, non-blocking buffer of rows that a background task flushes to a lake table.

Appending never waits: when the buffer is full the row is dropped and counted, so a slow
disk can never stall predictions. :meth:`flush` writes everything buffered in one commit.

Rows are kept as tuples in the schema's column order and turned into Arrow one column at a
time at flush; a large request's rows come as one chunk of columns instead
(:meth:`append_columns`: no tuple per row), which the flush turns into Arrow column by column
too, in the order the rows came. The table stays open between flushes, so a commit reads the
table's log once.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timedelta, timezone
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from tidal.infra.lake import Lake, TableWriter


class _Chunk:
    """Several rows as columns, in the schema's column order."""

    __slots__ = ("columns", "n")

    def __init__(self, columns: list[Sequence[Any]], n: int) -> None:
        self.columns = columns
        self.n = n


class LogBuffer:
    def __init__(self, *, lake: Lake, table: str, schema: pa.Schema, capacity: int) -> None:
        self.lake = lake
        self.table = table
        self.schema = schema
        self.capacity = capacity
        self.columns = list(schema.names)
        self._rows: deque[tuple[Any, ...] | _Chunk] = deque()
        self._size = 0  # rows buffered (a chunk holds several)
        self._size_lock = threading.Lock()  # appends come from the event loop and from the flush thread
        self._writer: TableWriter | None = None  # opened at the first flush
        self._lock = threading.Lock()  # serialises flushes; appends never take it (deque ops)
        self.dropped = 0
        self.written = 0

    def __len__(self) -> int:
        return self._size

    def append(self, row: tuple[Any, ...] | Mapping[str, Any]) -> bool:
        """Buffer one row: a tuple of values in the schema's column order, or a mapping of column
        name to value (a missing column is null; other keys are ignored)."""
        if self._size >= self.capacity:
            self.dropped += 1
            return False
        if not isinstance(row, tuple):
            row = tuple(row.get(name) for name in self.columns)
        with self._size_lock:
            self._size += 1
        self._rows.append(row)
        return True

    def extend(self, rows: list[tuple[Any, ...]] | list[Mapping[str, Any]]) -> int:
        return sum(self.append(r) for r in rows)

    def append_columns(self, columns: Mapping[str, Sequence[Any]], n: int) -> int:
        """Buffer ``n`` rows given column-wise: column name -> ``n`` values (a list, tuple or NumPy
        array; a missing column is null; other keys are ignored). Past the capacity the last rows
        are dropped and counted, as :meth:`append` would. Returns the rows buffered."""
        room = min(n, self.capacity - self._size)
        if room <= 0:
            self.dropped += n
            return 0
        nulls = (None,) * room
        chunk = []
        for name in self.columns:
            values = columns.get(name)
            chunk.append(nulls if values is None else values if room == n else values[:room])
        with self._size_lock:
            self._size += room
        self._rows.append(_Chunk(chunk, room))
        self.dropped += n - room
        return room

    def flush(self) -> int:
        """Write every buffered row in one Delta commit; return how many were written."""
        with self._lock:
            items = len(self._rows)
            if items == 0:
                return 0
            batch = [self._rows.popleft() for _ in range(items)]
            try:
                if self._writer is None:
                    self._writer = self.lake.writer(self.table)
                table = self.arrow(batch)
                self._writer.append(table)
            except BaseException:
                self._rows.extendleft(reversed(batch))  # keep them for the next try
                raise
            with self._size_lock:
                self._size -= table.num_rows
            self.written += table.num_rows
            return table.num_rows

    def arrow(self, rows: list[tuple[Any, ...] | _Chunk]) -> pa.Table:
        """Buffered rows as an Arrow table of the buffer's schema, built column by column.

        Runs beside the event loop, so it never holds the GIL for long: the columns are gathered
        in Python loops (which hand the GIL over at the interpreter's switch interval) and each
        ``pa.array`` call converts at most :data:`SLAB` values (as ``zip(*rows)`` or
        ``from_pylist`` over the whole batch would not). Timestamps with a time zone go through
        integers (:func:`_micros`): pyarrow asks each datetime for its UTC offset, a Python call a
        value, which made the time column the longest hold of the GIL by far.
        """
        parts: list[list[tuple[Any, ...]] | _Chunk] = []  # runs of single rows, and chunks, in order
        for item in rows:
            if type(item) is _Chunk:
                parts.append(item)
            elif parts and type(parts[-1]) is list:
                parts[-1].append(item)
            else:
                parts.append([item])
        per_column: list[list[pa.Array]] = [[] for _ in self.schema]
        for part in parts:
            if type(part) is _Chunk:
                for j, f in enumerate(self.schema):
                    per_column[j] += _arrays(part.columns[j], f.type)
                continue
            for start in range(0, len(part), ROWS_A_SLAB):  # rows turned into columns in C, a slab at a time
                for j, (values, f) in enumerate(zip(zip(*part[start:start + ROWS_A_SLAB]), self.schema)):
                    per_column[j] += _arrays(values, f.type)
        columns = [arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays) if arrays else pa.array([], type=f.type)
                   for arrays, f in zip(per_column, self.schema)]
        return pa.Table.from_arrays(columns, schema=self.schema)  # one array a column: the rows stay in order


SLAB = 4096  # values converted to Arrow by one call (one hold of the GIL)
ROWS_A_SLAB = 1024  # single rows transposed into columns at a time (zip(*rows): one hold of the GIL)
_EPOCH, _MICROSECOND = datetime(1970, 1, 1, tzinfo=timezone.utc), timedelta(microseconds=1)


def _arrays(values: Sequence[Any], kind: pa.DataType) -> list[pa.Array]:
    """``values`` as Arrow arrays of ``kind``, :data:`SLAB` values at a time."""
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
