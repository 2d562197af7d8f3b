"""Committing buffered log rows to the lake: turned into Arrow and written here, or by a writer process.

A log buffer (:class:`tidal.serving.logbuffer.LogBuffer`) holds rows as tuples and chunks of
columns (:mod:`tidal.infra.logrows`). A sink turns such a batch into one Arrow table
(:func:`~tidal.infra.logrows.to_arrow`) and appends it to a lake table in one commit:

- :class:`LocalSink` does it in the calling thread. It shares the interpreter's lock with the
  server's event loop: turning 15,000 rows into Arrow takes about 25 ms of it a second.
- :class:`ProcessSink` hands the batch to a writer process (``python -m tidal.infra.logwriter
  LAKE``) that does the conversion and the Delta commit. The server only packs the rows with
  msgpack (about 7 times cheaper than the conversion, in slabs of :data:`ROWS_A_SLAB` rows:
  short holds of the lock) and waits, lock released, for the writer's answer. ``write`` returns
  only once the rows are committed, so a caller sees the same thing from both sinks: the rows
  written, or an error with nothing lost (the buffer keeps them for the next flush).

Wire format (pipes, one frame per message: 4-byte little-endian length, then msgpack): the
server sends ``{"table", "schema" (Arrow IPC, the first time a table is written), "parts": k,
"txn": [app id, n], "resent"}`` then ``k`` parts, ``[0, rows]`` or ``[1, n, columns]``; the
writer answers ``{"rows"}`` or ``{"error"}``. ``txn`` is the batch's Delta transaction
identifier, committed with it: a batch resent after its writer died (``resent``) is committed
only if the table does not hold it yet. The writer exits when its input closes (the server
stopped or died).
"""

from __future__ import annotations

import logging
import select
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np
import pyarrow as pa

from tidal.infra.logrows import ROWS_A_SLAB, Chunk, NullableFloats, rows_in, to_arrow

__all__ = ["Chunk", "LocalSink", "NullableFloats", "ProcessSink", "WriterFailed", "to_arrow"]

log = logging.getLogger("tidal.serving")

_LENGTH = struct.Struct("<I")
RETRY_AFTER_S = 60  # after the writer process failed twice, batches are written in the server this long
ANSWER_TIMEOUT_S = 120  # a writer that has not answered a batch by then is taken as hung: stopped, and replaced


class LocalSink:
    """Converts and commits in the calling thread. Tables stay open between commits (one
    :class:`~tidal.infra.lake.TableWriter` each), so a commit reads the table's log once."""

    def __init__(self, lake: Any) -> None:
        self.lake = lake
        self._writers: dict[str, Any] = {}

    def write(self, table: str, schema: pa.Schema, items: Sequence[Any], *, txn: tuple[str, int] | None = None,
              resent: bool = False) -> int:
        """Append ``items`` to ``table`` in one commit; the rows written. ``txn`` is recorded with
        the commit; with ``resent`` (the batch may be in already), a batch found in is not written again."""
        writer = self._writers.get(table)
        if writer is None:
            writer = self._writers[table] = self.lake.writer(table, log=True)
        return _commit(writer, schema, items, txn, resent)

    def close(self) -> None:
        self._writers.clear()


class WriterFailed(RuntimeError):
    """The writer process refused a batch or stopped answering (the batch stays buffered)."""


class ProcessSink:
    """Hands batches to a writer process over pipes (started at the first write, restarted once
    when it has died; when it cannot be kept running the batch is written in the calling thread,
    as :class:`LocalSink` would); thread-safe."""

    def __init__(self, lake_root: str | Path) -> None:
        self.lake_root = str(lake_root)
        self._proc: subprocess.Popen[bytes] | None = None
        self._schemas_sent: set[str] = set()
        self._lock = threading.Lock()
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._local: LocalSink | None = None  # the fallback when the process cannot be kept running
        self._local_until = 0.0  # monotonic time until which batches are written here (the process failed)
        self.answer_timeout_s = ANSWER_TIMEOUT_S
        # each batch's transaction identifier: a batch resent after a lost answer is not committed twice
        self._app_id = f"tidal-log-{uuid.uuid4().hex}"
        self._batches = 0

    def start(self) -> None:
        """Start the writer process now (otherwise the first write does)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            # its own session: a Ctrl-C at the terminal stops the server, which then closes the writer's input
            self._proc = subprocess.Popen([sys.executable, "-m", "tidal.infra.logwriter", self.lake_root],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            self._schemas_sent = set()
        return self._proc

    def write(self, table: str, schema: pa.Schema, items: Sequence[Any]) -> int:
        """Append ``items`` to ``table`` in one commit, by the writer process; the rows written.
        Raises :class:`WriterFailed` when the writer refuses them (they were not committed). A writer
        that dies is restarted once and the batch resent; if it dies again (or cannot start) the
        batch is written here. A resent batch carries its first transaction identifier, so that if
        the dead writer had committed it before answering, it is not committed again."""
        with self._lock:
            self._batches += 1
            txn = (self._app_id, self._batches)
        if time.monotonic() < self._local_until:  # the process failed lately: written here meanwhile
            return self._fallback().write(table, schema, items, txn=txn)
        try:
            frames = self._frames(items)
        except (TypeError, OverflowError) as exc:  # a value msgpack cannot carry: pyarrow may still take it here
            log.warning("a %s batch cannot be sent to the log writer (%s); writing it in this process", table, exc)
            return self._fallback().write(table, schema, items)
        with self._lock:
            for attempt in (1, 2):
                proc = None
                try:
                    proc = self._ensure()
                    header = {"table": table, "parts": len(frames), "txn": txn, "resent": attempt > 1,
                              "schema": None if table in self._schemas_sent else schema.serialize().to_pybytes()}
                    assert proc.stdin is not None and proc.stdout is not None
                    _send(proc.stdin, self._encoder.encode(header))
                    for frame in frames:
                        _send(proc.stdin, frame)
                    proc.stdin.flush()
                    if not select.select([proc.stdout], [], [], self.answer_timeout_s)[0]:  # a hung writer
                        raise TimeoutError(f"no answer from the log writer in {self.answer_timeout_s:g} s")
                    reply = msgspec.msgpack.decode(_receive(proc.stdout))
                except (BrokenPipeError, EOFError, OSError) as exc:
                    if proc is not None:
                        if isinstance(exc, TimeoutError):
                            proc.kill()  # hung: it does not get to finish that batch (which is resent)
                        self._stop(proc)
                    if attempt == 1:
                        continue
                    # twice: the process cannot start or keeps dying; batches are written here for a while
                    self._local_until = time.monotonic() + RETRY_AFTER_S
                    log.warning("the log writer process failed twice (%s: %s); writing in this process for %d s",
                                type(exc).__name__, exc, RETRY_AFTER_S)
                    return self._fallback().write(table, schema, items, txn=txn, resent=True)
                except BaseException:  # mid-exchange (a garbled answer, an interrupt): the pipes are out of step
                    if proc is not None:
                        self._stop(proc)
                    raise
                if "error" in reply:
                    raise WriterFailed(f"the prediction-log writer refused the batch: {reply['error']}")
                self._schemas_sent.add(table)
                return int(reply["rows"])
        raise AssertionError("unreachable")

    def _fallback(self) -> LocalSink:
        if self._local is None:
            from tidal.infra.lake import Lake

            self._local = LocalSink(Lake(self.lake_root))
        return self._local

    def _frames(self, items: Sequence[Any]) -> list[bytes]:
        """The batch's parts, packed: runs of single rows :data:`ROWS_A_SLAB` at a time, a chunk whole.

        After each part the thread offers the GIL (``time.sleep(0)``): a request waiting for it
        runs at once instead of after the interpreter's switch interval (0.5 ms in the server,
        5 ms by default), so a flush of many parts never stalls the event loop for longer than
        one part's packing.
        """
        frames: list[bytes] = []
        run: list[Any] = []
        encode = self._encoder.encode
        for item in items:
            if type(item) is Chunk:
                if run:
                    frames.append(encode((0, run)))
                    run = []
                frames.append(encode((1, item.n, item.columns)))
                time.sleep(0)
            else:
                run.append(item)
                if len(run) == ROWS_A_SLAB:
                    frames.append(encode((0, run)))
                    run = []
                    time.sleep(0)
        if run:
            frames.append(encode((0, run)))
        return frames

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._proc is proc:
            self._proc = None

    def close(self) -> None:
        """Stop the writer process (after the last write: it exits when its input closes)."""
        with self._lock:
            if self._proc is not None:
                self._stop(self._proc)


_NULLABLE_FLOATS, _FLOATS = 1, 2  # msgpack extension codes: raw float64 bytes (NaN as null, or as NaN)


def _enc_hook(value: Any) -> Any:
    """Float columns as raw bytes (msgpack extensions), other NumPy values as Python ones;
    anything else is refused, as msgspec would."""
    if type(value) is NullableFloats:
        return msgspec.msgpack.Ext(_NULLABLE_FLOATS, value.values.tobytes())
    if isinstance(value, np.ndarray) and value.dtype == np.float64 and value.ndim == 1:
        return msgspec.msgpack.Ext(_FLOATS, np.ascontiguousarray(value).tobytes())
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"cannot send a {type(value).__name__} to the log writer")


def _ext_hook(code: int, data: memoryview) -> Any:
    values = np.frombuffer(bytes(data), dtype=np.float64)
    if code == _NULLABLE_FLOATS:
        return NullableFloats(values)
    if code == _FLOATS:
        return values
    raise ValueError(f"unknown msgpack extension {code}")


def _commit(writer: Any, schema: pa.Schema, items: Sequence[Any], txn: tuple[str, int] | None, resent: bool) -> int:
    """Commit ``items`` with ``writer`` (a :class:`~tidal.infra.lake.TableWriter`); the rows.
    A ``resent`` batch that the table already holds (its ``txn`` is in) is not written again."""
    if resent and txn is not None and writer.committed(txn):
        log.warning("a resent log batch was already committed (%s #%d); not written again", *txn)
        return sum(map(rows_in, items))
    data = to_arrow(schema, items)
    writer.append(data, txn=txn)
    return data.num_rows


def _send(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)


def _receive(stream: BinaryIO) -> bytes:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the stream ended")
    (size,) = _LENGTH.unpack(head)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the stream ended mid-message")
    return payload


def _naive_datetimes(values: Sequence[Any]) -> Sequence[Any]:
    """A timestamp column's values as the server held them: msgpack carries a datetime without a
    time zone as ISO text (one with a zone as a timestamp), so text here was a naive datetime."""
    if not any(type(v) is str for v in values):
        return values
    return [datetime.fromisoformat(v) if type(v) is str else v for v in values]


def _decoded(schema: pa.Schema, part: Any) -> Any:
    """One received part as buffered items: a list of row tuples, or a :class:`Chunk`."""
    stamps = [j for j, f in enumerate(schema) if pa.types.is_timestamp(f.type)]
    if part[0] == 1:
        columns = list(part[2])
        for j in stamps:
            columns[j] = _naive_datetimes(columns[j])
        return Chunk(columns, part[1])
    rows = part[1]
    if stamps and any(type(row[j]) is str for row in rows for j in stamps):
        rows = [tuple(datetime.fromisoformat(v) if j in stamps and type(v) is str else v for j, v in enumerate(row))
                for row in rows]
    return rows


def serve(lake_root: str, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The writer process's loop: read a batch, convert it, commit it, answer; until the input ends."""
    from tidal.infra.lake import Lake

    lake = Lake(lake_root)
    decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)
    writers: dict[str, Any] = {}
    schemas: dict[str, pa.Schema] = {}
    while True:
        try:
            header = msgspec.msgpack.decode(_receive(stdin))
            parts = [decoder.decode(_receive(stdin)) for _ in range(header["parts"])]
        except EOFError:
            return
        try:
            table = header["table"]
            if header.get("schema") is not None:
                schemas[table] = pa.ipc.read_schema(pa.py_buffer(header["schema"]))
            schema = schemas[table]
            items: list[Any] = []
            for part in parts:
                decoded = _decoded(schema, part)
                if type(decoded) is Chunk:
                    items.append(decoded)
                else:
                    items.extend(decoded)
            writer = writers.get(table)
            if writer is None:
                writer = writers[table] = lake.writer(table, log=True)
            txn = tuple(header["txn"]) if header.get("txn") else None
            reply: dict[str, Any] = {"rows": _commit(writer, schema, items, txn, bool(header.get("resent")))}
        except Exception as exc:  # noqa: BLE001 - answered: the server keeps the rows and logs the error
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        _send(stdout, msgspec.msgpack.encode(reply))
        stdout.flush()


if __name__ == "__main__":
    import os

    answers = os.fdopen(os.dup(1), "wb")  # the protocol's own copy of stdout ...
    os.dup2(2, 1)  # ... so that anything a library prints goes to stderr, not into the answers
    serve(sys.argv[1], sys.stdin.buffer, answers)
