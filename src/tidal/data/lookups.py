"""Lookup ingestion: the rows of a second source (weather by airport and hour, prices by
product and day...) land in their own Delta table, ``lookup_<name>``, once their key, time
and feature columns pass the spec's schema checks. Failing rows go to the quarantine table
under the batch id, like main rows, and a person releases or drops them the same way.

A batch is identified by its content, namespaced by the lookup (the same file ingested as
main data and as a lookup is two batches), and every commit is tagged with the batch id and
skipped when the table already holds it: ingesting again is a no-op, and repairs a crash.
The statistical batch checks and the poisoning guard measure batches against the main
data's reference and labels, so they do not apply to lookups.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from tidal.data.files import file_digest, read_file
from tidal.data.ingest import IngestReport, _known, has_batch, quarantine_rows, to_delta
from tidal.data.sources import digest, open_source
from tidal.data.validate import REASONS, validate_batch
from tidal.errors import DataValidationError, Problem, SpecError
from tidal.infra.lake import lookup_table
from tidal.infra.metadata import batches, now
from tidal.infra.workspace import Workspace
from tidal.spec import Feature, Lookup, Spec


def get_lookup(spec: Spec, name: str) -> Lookup:
    """The spec's lookup ``name``, or a SpecError naming the ones there are."""
    if name not in spec.lookups:
        known = ", ".join(spec.lookups) or "(none)"
        raise SpecError(f"the spec has no lookup named {name!r}",
                        fix=f"use one of: {known}; or declare it under lookups in the spec")
    return spec.lookups[name]


def lookup_spec(spec: Spec, name: str) -> Spec:
    """A spec whose schema is the columns of lookup ``name``, so :func:`validate_batch` checks its batches.

    The first key stands in as the target (text, required), further keys are required text
    columns and the lookup's time is the event time (a required datetime): exactly the
    rules a reading must meet. The features keep their types and constraints.
    """
    lookup = get_lookup(spec, name)
    first, *rest = lookup.keys
    features = {**{k: Feature(type="categorical", nullable=False) for k in rest}, **lookup.features}
    return Spec(name=spec.name, task="binary", target=first, event_time=lookup.time, features=features,
                validation=spec.validation)


def ingest_lookup_frame(ws: Workspace, spec: Spec, name: str, frame: pl.DataFrame, *, batch_id: str, source: str,
                        content_sha256: str) -> IngestReport:
    """Validate ``frame`` against lookup ``name`` and commit it as batch ``batch_id`` (a no-op if already committed).

    Raises :class:`DataValidationError` (and writes nothing) when a key or the time column
    is missing, or when a row fails and ``validation.schema_severity`` is ``reject``.
    """
    known = _known(ws, content_sha256)
    if known is not None:
        return known
    result = validate_batch(frame, lookup_spec(spec, name))
    if spec.validation.schema_severity == "reject" and result.quarantined.height:
        raise DataValidationError(
            f"lookup batch {batch_id} rejected: {result.quarantined.height} row(s) fail the schema",
            problems=[Problem(col, f"{n} row(s) fail") for col, n in sorted(result.reason_counts.items())])
    table = lookup_table(name)
    at = datetime.now(timezone.utc)
    info = {"tidal.batch_id": batch_id, "tidal.source": source, "tidal.lookup": name}
    version = ws.lake.version(table)
    if result.accepted.height and not has_batch(ws, table, batch_id):
        version = ws.lake.append(table, to_delta(result.accepted, batch_id, at), commit_info=info)
    q_raw = result.raw.filter(pl.col("_row").is_in(result.quarantined["_row"].implode()))
    if q_raw.height and not has_batch(ws, "quarantine", batch_id):
        ws.lake.append("quarantine", to_delta(quarantine_rows(q_raw, result.quarantined[REASONS].to_list()),
                                              batch_id, at), commit_info=info)
    report = IngestReport(batch_id=batch_id, source=source, rows_total=frame.height,
                          rows_accepted=result.accepted.height, rows_quarantined=q_raw.height, events_version=None,
                          reasons=dict(result.reason_counts), dropped_columns=result.dropped_columns,
                          lookup=name, lookup_version=version)
    ws.store.insert(batches, {
        "batch_id": batch_id, "source": source, "content_sha256": content_sha256,
        "rows_total": report.rows_total, "rows_accepted": report.rows_accepted,
        "rows_quarantined": report.rows_quarantined, "events_version": None,
        "report": {"reasons": report.reasons, "dropped_columns": report.dropped_columns, "status": "accepted",
                   "checks": [], "lookup": name, "lookup_version": version}, "created_at": now()})
    return report


def _content_id(name: str, content_sha256: str) -> tuple[str, str]:
    """(batch id, content sha256) of a lookup batch: the content's hash, namespaced by the lookup."""
    sha = digest("lookup", name, content_sha256)
    return f"b-{sha[:16]}", sha


def ingest_lookup_file(ws: Workspace, spec: Spec, name: str, path: str | Path) -> IngestReport:
    """Ingest one CSV or Parquet file of lookup ``name``."""
    path = Path(path)
    get_lookup(spec, name)
    batch_id, sha = _content_id(name, file_digest(path))
    return ingest_lookup_frame(ws, spec, name, read_file(path), batch_id=batch_id, source=str(path),
                               content_sha256=sha)


def ingest_lookup_source(ws: Workspace, spec: Spec, name: str, base: Path) -> list[IngestReport]:
    """One pass over the source of lookup ``name`` (paths relative to ``base``), saving its position after each batch."""
    source = open_source(get_lookup(spec, name).source, base)
    state_key = f"lookup:{name}:{source.name}"
    reports: list[IngestReport] = []
    try:
        state: dict[str, Any] = ws.store.source_state(state_key)
        for batch in source.read(state):
            batch_id, sha = _content_id(name, batch.content_sha256)
            reports.append(ingest_lookup_frame(ws, spec, name, batch.frame, batch_id=batch_id, source=source.name,
                                               content_sha256=sha))
            state = source.commit(batch, state)
            ws.store.save_source_state(state_key, state)
    finally:
        source.close()
    return reports


def batch_lookup(ws: Workspace, batch_id: str) -> str | None:
    """The lookup a batch was ingested for, or None for a main batch (or an unknown one)."""
    import sqlalchemy as sa

    rows = ws.store.select(sa.select(batches.c.report).where(batches.c.batch_id == batch_id))
    return rows[0]["report"].get("lookup") if rows else None
