"""A bounded, non-blocking buffer of rows that a background task flushes to a lake table.

Appending never waits: when the buffer is full the row is dropped and counted, so a slow
disk can never stall predictions. :meth:`flush` writes everything buffered in one commit.

Rows are kept as tuples in the schema's column order; a large request's rows come as one
chunk of columns instead (:meth:`append_columns`: no tuple per row; see :mod:`tidal.infra.logrows`).
A flush hands them, in the order they came, to a sink (:mod:`tidal.infra.logwriter`) that turns them into Arrow and
commits: in the flushing thread (:class:`~tidal.infra.logwriter.LocalSink`, the default), or
in a writer process (:class:`~tidal.infra.logwriter.ProcessSink`, the server's default), which
keeps that work off the interpreter lock that the event loop needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from tidal.infra.lake import Lake
from tidal.infra.logrows import Chunk, rows_in, to_arrow
from tidal.infra.logwriter import LocalSink, WriterFailed


log = logging.getLogger("tidal.serving")


class LogBuffer:
    """``due`` is set once the buffer holds half its capacity: the flusher waits on it (as well as
    on its interval), so a burst of large requests is written early instead of filling the
    buffer and being dropped. Several buffers may share one."""

    def __init__(self, *, lake: Lake, table: str, schema: pa.Schema, capacity: int, sink: Any = None,
                 due: threading.Event | None = None) -> None:
        self.lake = lake
        self.table = table
        self.schema = schema
        self.capacity = capacity
        self.sink = sink  # LocalSink(lake) when None (made at the first flush)
        self.columns = list(schema.names)
        self._rows: deque[tuple[Any, ...] | Chunk] = deque()
        self._size = 0  # rows buffered (a chunk holds several)
        self._size_lock = threading.Lock()  # appends come from the event loop and from the flush thread
        self._lock = threading.Lock()  # serialises flushes; appends never take it (deque ops)
        self.dropped = 0
        self.written = 0
        self.due = due if due is not None else threading.Event()
        self._half = max(1, capacity // 2)

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
        if self._size >= self._half and not self.due.is_set():
            self.due.set()
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
        self._rows.append(Chunk(chunk, room))
        self.dropped += n - room
        if self._size >= self._half and not self.due.is_set():
            self.due.set()
        return room

    def flush(self) -> int:
        """Write every buffered row in one Delta commit; return how many were written."""
        with self._lock:
            items = len(self._rows)
            if items == 0:
                return 0
            batch = [self._rows.popleft() for _ in range(items)]
            if self.sink is None:
                self.sink = LocalSink(self.lake)
            try:
                written = self._write(batch)
            except BaseException:
                self._rows.extendleft(reversed(batch))  # what is left of it: kept for the next try
                raise
            with self._size_lock:
                self._size -= written
            self.written += written
            _release(batch)
            return written

    def _write(self, batch: list[Any]) -> int:
        """Commit ``batch``; when rows no table of the schema can hold are the cause, they are taken
        out of ``batch``, dropped and counted, and the rest is committed (not retried forever)."""
        try:
            return self.sink.write(self.table, self.schema, batch)
        except (WriterFailed, pa.ArrowException, TypeError, ValueError) as exc:
            unfit = self._unfit(batch)
            if not unfit:  # not the rows (a disk, a lock): all of them are kept
                raise
            lost = sum(rows_in(batch[i]) for i in unfit)
            log.warning("%s log: %d row(s) that no %s table can hold were dropped (%s)",
                        self.table, lost, self.table, exc)
            for i in reversed(unfit):
                del batch[i]
            with self._size_lock:
                self._size -= lost
            self.dropped += lost
            return self.sink.write(self.table, self.schema, batch) if batch else 0

    def _unfit(self, batch: list[Any]) -> list[int]:
        """Positions of the items (a row, or a request's chunk) that cannot become rows of the schema."""
        unfit = []
        for i, item in enumerate(batch):
            try:
                to_arrow(self.schema, [item])
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                unfit.append(i)
        return unfit

    def arrow(self, rows: list[tuple[Any, ...] | Chunk]) -> pa.Table:
        """Buffered rows as an Arrow table of the buffer's schema (what a sink commits)."""
        return to_arrow(self.schema, rows)


RELEASE_ROWS = 1024  # written rows freed at a time (a chunk counts its rows)


def _release(batch: list[Any]) -> None:
    """Free written rows a slab at a time, offering the GIL between slabs (``time.sleep(0)``).

    Freeing a second's rows at once (15,000 rows of 30 values, or 135 large requests'
    columns: millions of Python objects) held the GIL for tens of milliseconds beside the
    event loop.
    """
    freed = 0
    while batch:
        item = batch.pop()
        freed += rows_in(item)
        del item
        if freed >= RELEASE_ROWS:
            freed = 0
            time.sleep(0)
