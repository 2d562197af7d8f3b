"""Ingestion: read a batch, validate it, commit accepted rows and quarantine the rest.

A batch is identified by the sha256 of its content, so re-ingesting the same file is a
no-op. Each table write is one Delta commit tagged with the batch id, and a write is
skipped when the table already holds that batch, so a crash between the commits and the
metadata row is repaired by simply ingesting again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from tidal.data.files import file_digest, read_file
from tidal.data.validate import REASONS, validate_batch
from tidal.infra.metadata import batches, now
from tidal.infra.workspace import Workspace
from tidal.spec import Spec


@dataclass(frozen=True)
class IngestReport:
    batch_id: str
    source: str
    rows_total: int
    rows_accepted: int
    rows_quarantined: int
    events_version: int | None
    reasons: dict[str, int]
    dropped_columns: list[str]
    already_ingested: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _has_batch(ws: Workspace, table: str, batch_id: str) -> bool:
    data = ws.lake.read(table, columns=["_batch_id"])
    if data is None or data.num_rows == 0:
        return False
    return bool(pc.any(pc.equal(data.column("_batch_id"), batch_id)).as_py())


def _stamp(df: pl.DataFrame, batch_id: str, at: datetime) -> pa.Table:
    out = df.with_columns(pl.lit(batch_id).alias("_batch_id"),
                          pl.lit(at).cast(pl.Datetime("us", "UTC")).alias("_ingested_at"))
    table = out.to_arrow()
    # Delta wants plain string types; polars may hand out string views.
    fields = [pa.field(f.name, pa.string() if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                       or str(f.type) == "string_view" else f.type) for f in table.schema]
    return table.cast(pa.schema(fields))


def ingest_frame(ws: Workspace, spec: Spec, frame: pl.DataFrame, *, batch_id: str, source: str,
                 content_sha256: str, trust: str = "high") -> IngestReport:
    """Validate ``frame`` and commit it as batch ``batch_id`` (a no-op if already committed)."""
    known = ws.store.batch_by_content(content_sha256)
    if known is not None:
        return IngestReport(batch_id=known["batch_id"], source=known["source"], rows_total=known["rows_total"],
                            rows_accepted=known["rows_accepted"], rows_quarantined=known["rows_quarantined"],
                            events_version=known["events_version"], reasons=known["report"].get("reasons", {}),
                            dropped_columns=known["report"].get("dropped_columns", []), already_ingested=True)
    result = validate_batch(frame, spec)
    at = datetime.now(timezone.utc)
    info = {"tidal.batch_id": batch_id, "tidal.source": source}
    events_version = ws.lake.version("events")
    if result.accepted.height and not _has_batch(ws, "events", batch_id):
        events_version = ws.lake.append("events", _stamp(result.accepted, batch_id, at), commit_info=info)
    if result.quarantined.height and not _has_batch(ws, "quarantine", batch_id):
        q = result.quarantined.select(
            "_row",
            pl.struct(pl.all().exclude("_row", REASONS)).struct.json_encode().alias("record"),
            pl.col(REASONS).list.join("; ").alias("reasons"))
        ws.lake.append("quarantine", _stamp(q, batch_id, at), commit_info=info)
    report = IngestReport(batch_id=batch_id, source=source, rows_total=frame.height,
                          rows_accepted=result.accepted.height, rows_quarantined=result.quarantined.height,
                          events_version=events_version, reasons=result.reason_counts,
                          dropped_columns=result.dropped_columns)
    ws.store.insert(batches, {
        "batch_id": batch_id, "source": source, "content_sha256": content_sha256,
        "rows_total": report.rows_total, "rows_accepted": report.rows_accepted,
        "rows_quarantined": report.rows_quarantined, "events_version": events_version,
        "report": {"reasons": report.reasons, "dropped_columns": report.dropped_columns}, "created_at": now()})
    return report


def ingest_file(ws: Workspace, spec: Spec, path: str | Path) -> IngestReport:
    """Ingest one CSV or Parquet file."""
    path = Path(path)
    digest = file_digest(path)
    frame = read_file(path)
    return ingest_frame(ws, spec, frame, batch_id=f"b-{digest[:16]}", source=str(path), content_sha256=digest)
