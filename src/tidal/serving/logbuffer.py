"""A bounded, non-blocking buffer of rows that a background task flushes to a lake table.

Appending never waits: when the buffer is full the row is dropped and counted, so a slow
disk can never stall predictions. :meth:`flush` writes everything buffered in one commit.

Rows are kept as tuples in the schema's column order and turned into Arrow one column at a
time at flush; the table stays open between flushes, so a commit reads the table's log once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from tidal.infra.lake import Lake, TableWriter


class LogBuffer:
    def __init__(self, *, lake: Lake, table: str, schema: pa.Schema, capacity: int) -> None:
        self.lake = lake
        self.table = table
        self.schema = schema
        self.capacity = capacity
        self.columns = list(schema.names)
        self._rows: deque[tuple[Any, ...]] = deque()
        self._writer: TableWriter | None = None  # opened at the first flush
        self._lock = threading.Lock()  # serialises flushes; appends are lock-free deque ops
        self.dropped = 0
        self.written = 0

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, row: tuple[Any, ...] | Mapping[str, Any]) -> bool:
        """Buffer one row: a tuple of values in the schema's column order, or a mapping of column
        name to value (a missing column is null; other keys are ignored)."""
        if len(self._rows) >= self.capacity:
            self.dropped += 1
            return False
        if not isinstance(row, tuple):
            row = tuple(row.get(name) for name in self.columns)
        self._rows.append(row)
        return True

    def extend(self, rows: list[tuple[Any, ...]] | list[Mapping[str, Any]]) -> int:
        return sum(self.append(r) for r in rows)

    def flush(self) -> int:
        """Write every buffered row in one Delta commit; return how many were written."""
        with self._lock:
            n = len(self._rows)
            if n == 0:
                return 0
            batch = [self._rows.popleft() for _ in range(n)]
            try:
                if self._writer is None:
                    self._writer = self.lake.writer(self.table)
                self._writer.append(self.arrow(batch))
            except BaseException:
                self._rows.extendleft(reversed(batch))  # keep them for the next try
                raise
            self.written += n
            return n

    def arrow(self, rows: list[tuple[Any, ...]]) -> pa.Table:
        """Buffered rows as an Arrow table of the buffer's schema, built column by column.

        Runs beside the event loop: the columns are gathered in Python loops (which hand the GIL
        over at the interpreter's switch interval) and each ``pa.array`` call holds it for one
        column only, never for the whole batch (as ``zip(*rows)`` or ``from_pylist`` would).
        """
        return pa.Table.from_arrays([pa.array([row[j] for row in rows], type=f.type)
                                     for j, f in enumerate(self.schema)], schema=self.schema)
