"""A bounded, non-blocking buffer of rows that a background task flushes to a lake table.

Appending never waits: when the buffer is full the row is dropped and counted, so a slow
disk can never stall predictions. :meth:`flush` writes everything buffered in one commit.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import pyarrow as pa

from tidal.infra.lake import Lake


class LogBuffer:
    def __init__(self, *, lake: Lake, table: str, schema: pa.Schema, capacity: int) -> None:
        self.lake = lake
        self.table = table
        self.schema = schema
        self.capacity = capacity
        self._rows: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()  # serialises flushes; appends are lock-free deque ops
        self.dropped = 0
        self.written = 0

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, row: dict[str, Any]) -> bool:
        if len(self._rows) >= self.capacity:
            self.dropped += 1
            return False
        self._rows.append(row)
        return True

    def extend(self, rows: list[dict[str, Any]]) -> int:
        return sum(self.append(r) for r in rows)

    def flush(self) -> int:
        """Write every buffered row in one Delta commit; return how many were written."""
        with self._lock:
            n = len(self._rows)
            if n == 0:
                return 0
            batch = [self._rows.popleft() for _ in range(n)]
            try:
                self.lake.append(self.table, pa.Table.from_pylist(batch, schema=self.schema))
            except BaseException:
                self._rows.extendleft(reversed(batch))  # keep them for the next try
                raise
            self.written += n
            return n
