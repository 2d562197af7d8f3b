"""SQL source: a table or a SELECT read incrementally by a watermark column.

Each batch holds the rows whose watermark is past the saved one, oldest first, at most
``max_rows`` of them, but rows sharing a watermark value are never split across two
batches (a single value with more rows than ``max_rows`` makes one larger batch), so the
saved watermark is always a safe place to resume. Rows whose watermark is NULL are never
read. A batch's id follows from the source name and its watermark range, so a batch
replayed after a crash is recognised by the ingester.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from tidal.data.sources.base import Batch, digest, register_source
from tidal.errors import DataValidationError

_SELECT = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)


def encode_watermark(value: Any) -> dict[str, Any]:
    """A watermark as JSON: the value (as text for timestamps and decimals) and its type."""
    if isinstance(value, bool):  # a boolean watermark cannot grow; refuse it clearly
        raise DataValidationError(f"a boolean watermark cannot order rows (got {value!r})",
                                  fix="use a column that grows with new rows, e.g. updated_at or an id")
    if isinstance(value, int):
        return {"type": "int", "value": value}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, datetime):  # before date: a datetime is a date
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {"type": "date", "value": value.isoformat()}
    return {"type": "str", "value": str(value)}


def decode_watermark(saved: dict[str, Any]) -> Any:
    """The value :func:`encode_watermark` saved, with its Python type back."""
    kind, value = saved["type"], saved["value"]
    if kind == "datetime":
        return datetime.fromisoformat(value)
    if kind == "date":
        return date.fromisoformat(value)
    if kind == "decimal":
        return Decimal(value)
    return {"int": int, "float": float}.get(kind, str)(value)


_NATIVE = (str, int, float, Decimal, date, datetime, time, timedelta, bytes)


def _frame(columns: list[str], rows: list[tuple]) -> pl.DataFrame:
    """Rows as a frame; values Polars cannot hold natively (UUIDs, JSON, arrays...) become text."""
    odd = {i for i in range(len(columns))
           if not isinstance(next((r[i] for r in rows if r[i] is not None), ""), _NATIVE)}
    if odd:
        rows = [tuple(_as_text(v) if i in odd else v for i, v in enumerate(r)) for r in rows]
    return pl.DataFrame(rows, schema=columns, orient="row", infer_schema_length=None)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)


@register_source("sql")
class SqlSource:
    """Rows of a table or query past the saved watermark, in batches of at most ``max_rows``."""

    def __init__(self, config: Any, base: Path) -> None:
        self.url = config.url
        self.query = config.query.strip().rstrip(";")
        self.watermark = config.watermark
        self.max_rows = config.max_rows
        self.trust = config.trust
        bare = not _SELECT.match(self.query)
        self.name = config.name or (f"sql:{self.query}" if bare else f"sql:{digest(self.query)[:12]}")
        self._engine: Any = None

    def _relation(self) -> Any:
        import sqlalchemy as sa

        if _SELECT.match(self.query):
            return sa.text(f"({self.query}) AS tidal_source")
        schema, _, table = self.query.rpartition(".")
        return sa.table(table, schema=schema or None)

    def _fetch(self, low: Any, *, high: Any = None, limit: int | None = None) -> tuple[list[str], list[Any]]:
        """Rows with low < watermark (<= high), ordered by the watermark."""
        import sqlalchemy as sa

        from tidal.infra.metadata import make_engine

        if self._engine is None:
            self._engine = make_engine(self.url)
        wm = sa.column(self.watermark)
        query = sa.select(sa.literal_column("*")).select_from(self._relation()).where(wm.is_not(None))
        if low is not None:
            query = query.where(wm > sa.bindparam("low", low))
        if high is not None:
            query = query.where(wm <= sa.bindparam("high", high))
        query = query.order_by(wm)
        if limit is not None:
            query = query.limit(limit)
        try:
            with self._engine.connect() as conn:
                result = conn.execute(query)
                return list(result.keys()), [tuple(r) for r in result]
        except sa.exc.SQLAlchemyError as exc:
            raise DataValidationError(
                f"source {self.name}: cannot read {self.query!r}: {exc.__class__.__name__}: "
                f"{str(exc.orig if getattr(exc, 'orig', None) else exc).strip().splitlines()[0]}",
                fix=f"check the url, the query and that it has the watermark column {self.watermark!r}") from None

    def _next_rows(self, low: Any) -> tuple[list[str], list[Any]]:
        """The next batch's rows: at most max_rows, never splitting equal watermarks."""
        columns, rows = self._fetch(low, limit=self.max_rows + 1)
        if self.watermark not in columns:
            raise DataValidationError(f"source {self.name}: the query has no column {self.watermark!r}",
                                      fix=f"select the watermark column; the query returns {columns}")
        if len(rows) <= self.max_rows:
            return columns, rows
        at = columns.index(self.watermark)
        boundary = rows[self.max_rows][at]
        kept = [r for r in rows[:self.max_rows] if r[at] != boundary]
        if kept:
            return columns, kept
        # more than max_rows rows share one watermark value: they make one batch together
        return self._fetch(low, high=boundary)

    def read(self, state: dict[str, Any]) -> Iterator[Batch]:
        saved = state.get("watermark")
        low = decode_watermark(saved) if saved else None
        low_text = saved["value"] if saved else ""
        while True:
            columns, rows = self._next_rows(low)
            if not rows:
                return
            high = rows[-1][columns.index(self.watermark)]
            encoded = encode_watermark(high)
            frame = _frame(columns, rows)
            sha = digest("sql", self.name, low_text, encoded["value"])
            yield Batch(batch_id=f"b-{sha[:16]}", frame=frame, source=self.name, content_sha256=sha,
                        position={"watermark": encoded, "rows": len(rows)})
            low, low_text = high, encoded["value"]

    def commit(self, batch: Batch, state: dict[str, Any]) -> dict[str, Any]:
        return {"watermark": batch.position["watermark"]}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
