"""Batch scoring's input and output: CSV, Parquet or Delta in, chunk by chunk; Parquet or CSV out, atomically.

Readers yield Polars frames of raw columns (CSV as text, typed later by ingestion's rules),
never the whole input: memory is bounded by the chunk size. The writer appends each chunk
to a hidden temporary file beside the output and renames it over the output only when the
run succeeds, so a failed or interrupted run leaves no half-written output.
:func:`prefetch` and the writer's own thread overlap reading and writing with scoring;
their queues hold at most a chunk or two, so memory stays bounded.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa

from tidal.errors import DataValidationError

INPUT_FORMATS = "a .csv or .parquet file, or a Delta table folder"
OUTPUT_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
T = TypeVar("T")
_END = object()


def prefetch(items: Iterator[T], *, depth: int = 1) -> Iterator[T]:
    """``items``, computed in a background thread at most ``depth`` ahead; its errors re-raised here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((False, exc))

    thread = threading.Thread(target=produce, name="tidal-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = slots.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass
class BatchInput:
    """An opened input: its format, its columns, its row count (None when unknown) and its size."""

    path: str
    format: str  # csv, parquet or delta
    columns: list[str]
    total_rows: int | None
    size_bytes: int | None

    def frames(self, columns: list[str], chunk_rows: int) -> Iterator[pl.DataFrame]:
        """The input's ``columns``, in order, as frames of exactly ``chunk_rows`` rows (the last one fewer)."""
        return rechunk(self._frames(columns, chunk_rows), chunk_rows)

    def head(self, columns: list[str], rows: int) -> pl.DataFrame:
        """The input's first ``rows`` rows of ``columns`` (reading no more of it than that)."""
        if self.format == "csv":
            return pl.scan_csv(self.path, infer_schema=False).select(columns).head(rows).collect()
        if self.format == "parquet":
            import pyarrow.parquet as pq

            batch = next(pq.ParquetFile(self.path).iter_batches(batch_size=rows, columns=columns), None)
            return pl.DataFrame(schema=columns) if batch is None else _frame(batch)
        return _frame(_delta_dataset(self.path).head(rows, columns=columns))

    def _frames(self, columns: list[str], chunk_rows: int) -> Iterator[pl.DataFrame]:
        if self.format == "csv":
            lazy = pl.scan_csv(self.path, infer_schema=False).select(columns)
            yield from lazy.collect_batches(chunk_size=chunk_rows)
        elif self.format == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=chunk_rows, columns=columns):
                yield _frame(batch)
        else:
            for batch in _delta_dataset(self.path).to_batches(columns=columns, batch_size=chunk_rows):
                yield _frame(batch)


def _frame(batch: pa.RecordBatch) -> pl.DataFrame:
    return pl.from_arrow(batch)  # type: ignore[return-value]


def _delta_dataset(path: str) -> Any:
    from deltalake import DeltaTable

    return DeltaTable(path).to_pyarrow_dataset()


def open_input(path: str | Path) -> BatchInput:
    """Open ``path`` for reading by its kind (a folder is a Delta table), with a clear error if it cannot be."""
    text = str(path)
    local = Path(path)
    try:
        if "://" in text or local.is_dir():
            dataset = _delta_dataset(text)
            return BatchInput(text, "delta", dataset.schema.names, dataset.count_rows(), None)
        if not local.exists():
            raise DataValidationError(f"input not found: {local}", fix=f"pass {INPUT_FORMATS}")
        suffix = local.suffix.lower()
        if suffix == ".csv":
            names = pl.scan_csv(local, infer_schema=False).collect_schema().names()
            return BatchInput(text, "csv", names, None, local.stat().st_size)
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(local)
            return BatchInput(text, "parquet", meta.schema_arrow.names, meta.metadata.num_rows, local.stat().st_size)
    except DataValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a problem with the input
        raise DataValidationError(f"cannot read {text}: {type(exc).__name__}: {exc}".strip(),
                                  fix=f"pass {INPUT_FORMATS}") from None
    raise DataValidationError(f"unsupported input {local} (suffix {local.suffix or 'none'!r})",
                              fix=f"pass {INPUT_FORMATS}")


def rechunk(frames: Iterator[pl.DataFrame], rows: int) -> Iterator[pl.DataFrame]:
    """Frames of exactly ``rows`` rows (the last one fewer, never an empty one), whatever sizes come in."""
    pending: list[pl.DataFrame] = []
    count = 0
    for frame in frames:
        if not frame.height:
            continue
        pending.append(frame)
        count += frame.height
        if count < rows:
            continue
        whole = pl.concat(pending, how="vertical_relaxed", rechunk=False) if len(pending) > 1 else pending[0]
        start = 0
        while whole.height - start >= rows:
            yield whole.slice(start, rows)
            start += rows
        pending = [whole.slice(start)] if start < whole.height else []
        count = whole.height - start
    if count:
        yield pl.concat(pending, how="vertical_relaxed") if len(pending) > 1 else pending[0]


def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise DataValidationError(f"unsupported output {path} (suffix {suffix or 'none'!r})",
                                  fix="name the output *.parquet or *.csv")
    return OUTPUT_SUFFIXES[suffix]


class AtomicWriter:
    """Appends Arrow tables to a temporary file from a background thread; :meth:`commit` renames it
    over the output, :meth:`abort` removes it.

    Parquet: dictionary-encoded text columns are written as such (no re-hashing) and read back
    as plain text; numbers are not dictionary-encoded (scores rarely repeat). CSV: plain text.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = output_format(self.path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file: Any = None
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def write(self, table: pa.Table) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="tidal-writer", daemon=True)
            self._thread.start()
        self._raise()
        self._queue.put(table)

    def _drain(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking chunks so the scorer never blocks; the error surfaces there
            try:
                self._write_now(table)
            except BaseException as exc:  # noqa: BLE001 - re-raised by write() or commit()
                self._error = exc

    def _write_now(self, table: pa.Table) -> None:
        if self.format == "csv":
            table = pa.table({n: _plain_text(c) for n, c in zip(table.column_names, table.columns)})
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale()
            if self.format == "parquet":
                import pyarrow.parquet as pq

                coded = [f.name for f in table.schema if pa.types.is_dictionary(f.type) or pa.types.is_integer(f.type)]
                self._file = pq.ParquetWriter(self.tmp, table.schema, use_dictionary=coded, store_schema=False)
            else:
                import pyarrow.csv as pacsv

                self._file = pacsv.CSVWriter(self.tmp, table.schema)
        self._file.write_table(table)

    def _remove_stale(self) -> None:
        """Remove temporary files of this output left by runs that were killed (their process is gone)."""
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            pid = tmp.name[len(self.path.name) + 2:-len(".tmp")]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)

    def _finish_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def commit(self, empty: pa.Table) -> None:
        """Finish the file (``empty`` gives the columns when no chunk came) and move it into place."""
        self._finish_thread()
        self._raise()
        if self._file is None:
            self._write_now(empty)
        self._file.close()
        self._file = None
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._finish_thread()
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - the file is removed anyway
                pass
            self._file = None
        self.tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _plain_text(column: Any) -> Any:
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
