"""Ingestion: validate a batch, run the batch checks and the poisoning guard, then commit
accepted rows and quarantine the rest (or hold the whole batch, or reject it).

A batch has a deterministic id, so re-ingesting the same content is a no-op. Each table
write is one Delta commit tagged with the batch id, and a write is skipped when the table
already holds that batch, so a crash between the commits and the metadata row is repaired
by ingesting again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from tidal.data.checks import CheckContext, ReferenceModel, run_checks
from tidal.data.files import file_digest, read_file
from tidal.data.reference import load_reference
from tidal.data.validate import REASONS, validate_batch
from tidal.errors import DataValidationError, Problem
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
    status: str = "accepted"  # accepted | held
    checks: list[dict[str, Any]] = field(default_factory=list)
    already_ingested: bool = False
    lookup: str | None = None  # a lookup batch: the lookup's name (its rows went to lookup_<name>, not events)
    lookup_version: int | None = None  # the version of lookup_<name> after the batch

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"]]


def has_batch(ws: Workspace, table: str, batch_id: str) -> bool:
    data = ws.lake.read(table, columns=["_batch_id"])
    if data is None or data.num_rows == 0:
        return False
    return bool(pc.any(pc.equal(data.column("_batch_id"), batch_id)).as_py())


def to_delta(df: pl.DataFrame, batch_id: str, at: datetime) -> pa.Table:
    out = df.with_columns(pl.lit(batch_id).alias("_batch_id"),
                          pl.lit(at).cast(pl.Datetime("us", "UTC")).alias("_ingested_at"))
    table = out.to_arrow()
    # Delta wants plain string types; polars may hand out string views.
    fields = [pa.field(f.name, pa.string() if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                       or str(f.type) == "string_view" else f.type) for f in table.schema]
    return table.cast(pa.schema(fields))


def quarantine_rows(raw: pl.DataFrame, reasons: pl.Series | list[list[str]]) -> pl.DataFrame:
    """Raw rows (text, with _row) and their reasons, in the quarantine table's shape."""
    return raw.select(
        "_row", pl.struct(pl.all().exclude("_row")).struct.json_encode().alias("record")
    ).with_columns(pl.Series("reasons", [r if isinstance(r, str) else "; ".join(r) for r in reasons], dtype=pl.String))


def _known(ws: Workspace, content_sha256: str) -> IngestReport | None:
    known = ws.store.batch_by_content(content_sha256)
    if known is None:
        return None
    rep = known["report"]
    return IngestReport(batch_id=known["batch_id"], source=known["source"], rows_total=known["rows_total"],
                        rows_accepted=known["rows_accepted"], rows_quarantined=known["rows_quarantined"],
                        events_version=known["events_version"], reasons=rep.get("reasons", {}),
                        dropped_columns=rep.get("dropped_columns", []), status=rep.get("status", "accepted"),
                        checks=rep.get("checks", []), already_ingested=True, lookup=rep.get("lookup"),
                        lookup_version=rep.get("lookup_version"))


def ingest_frame(ws: Workspace, spec: Spec, frame: pl.DataFrame, *, batch_id: str, source: str,
                 content_sha256: str, trust: str = "high", model: ReferenceModel | None = None) -> IngestReport:
    """Validate ``frame`` and commit it as batch ``batch_id`` (a no-op if already committed).

    Raises :class:`DataValidationError` (and writes nothing) when a check of severity
    ``reject`` fails.
    """
    known = _known(ws, content_sha256)
    if known is not None:
        return known
    result = validate_batch(frame, spec)
    if spec.validation.schema_severity == "reject" and result.quarantined.height:
        raise DataValidationError(
            f"batch {batch_id} rejected: {result.quarantined.height} row(s) fail the schema",
            problems=[Problem(col, f"{n} row(s) fail") for col, n in sorted(result.reason_counts.items())])
    accepted = result.accepted
    ctx = CheckContext(spec=spec, reference=load_reference(ws, spec), trust=trust, model=model)
    checks = run_checks(accepted.drop("_row"), ctx)
    failed = [c for c in checks if not c.passed]
    rejects = [c for c in failed if c.severity == "reject"]
    if rejects:
        raise DataValidationError(f"batch {batch_id} rejected by {len(rejects)} check(s)",
                                  problems=[Problem(c.check, c.message) for c in rejects])
    q_raw = result.raw_rows(result.quarantined["_row"])
    q_reasons: list[Any] = result.quarantined[REASONS].to_list()
    reason_counts = dict(result.reason_counts)
    # row-level batch checks (repeated keys) quarantine their rows
    for c in failed:
        if c.row_mask is not None and c.severity == "quarantine":
            rows = accepted.filter(pl.Series(c.row_mask))["_row"]
            accepted = accepted.filter(~pl.Series(c.row_mask))
            q_raw = pl.concat([q_raw, result.raw_rows(rows)])
            q_reasons += [[c.message]] * rows.len()
            reason_counts[c.check] = reason_counts.get(c.check, 0) + rows.len()
    held = [c for c in failed if c.row_mask is None and c.severity == "quarantine"]
    status = "accepted"
    if held:
        status = "held"
        note = "batch held: " + "; ".join(c.message for c in held)
        held_raw = result.raw_rows(accepted["_row"])
        q_raw = pl.concat([q_raw, held_raw])
        q_reasons += [[note]] * held_raw.height
        for c in held:
            reason_counts[c.check] = reason_counts.get(c.check, 0) + held_raw.height
        accepted = accepted.clear()
    at = datetime.now(timezone.utc)
    info = {"tidal.batch_id": batch_id, "tidal.source": source}
    events_version = ws.lake.version("events")
    if accepted.height and not has_batch(ws, "events", batch_id):
        events_version = ws.lake.append("events", to_delta(accepted, batch_id, at), commit_info=info)
    if q_raw.height and not has_batch(ws, "quarantine", batch_id):
        ws.lake.append("quarantine", to_delta(quarantine_rows(q_raw, q_reasons), batch_id, at), commit_info=info)
    report = IngestReport(batch_id=batch_id, source=source, rows_total=frame.height, rows_accepted=accepted.height,
                          rows_quarantined=q_raw.height, events_version=events_version, reasons=reason_counts,
                          dropped_columns=result.dropped_columns, status=status,
                          checks=[c.as_dict() for c in checks])
    ws.store.insert(batches, {
        "batch_id": batch_id, "source": source, "content_sha256": content_sha256,
        "rows_total": report.rows_total, "rows_accepted": report.rows_accepted,
        "rows_quarantined": report.rows_quarantined, "events_version": events_version,
        "report": {"reasons": report.reasons, "dropped_columns": report.dropped_columns, "status": status,
                   "checks": report.checks, "trust": trust}, "created_at": now()})
    return report


def ingest_file(ws: Workspace, spec: Spec, path: str | Path, *, trust: str = "high",
                model: ReferenceModel | None = None) -> IngestReport:
    """Ingest one CSV or Parquet file."""
    path = Path(path)
    digest = file_digest(path)
    frame = read_file(path)
    return ingest_frame(ws, spec, frame, batch_id=f"b-{digest[:16]}", source=str(path), content_sha256=digest,
                        trust=trust, model=model)
