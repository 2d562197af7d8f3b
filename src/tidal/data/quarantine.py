"""Quarantine: held rows are kept with their reasons, never read for training, until a
person releases them (they enter the lake with their original batch id) or drops them.

The quarantine Delta table is append-only; decisions are rows of the metadata database,
so the history of who released or dropped what, and why, is kept.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import polars as pl
import pyarrow.compute as pc
import sqlalchemy as sa

from tidal.data.ingest import to_delta
from tidal.data.lookups import batch_lookup, lookup_spec
from tidal.data.validate import validate_batch
from tidal.errors import NotFound, StateError
from tidal.infra.lake import lookup_table
from tidal.infra.metadata import batches, now, quarantine_decisions
from tidal.infra.workspace import Workspace
from tidal.spec import Spec


def _decided(ws: Workspace) -> dict[str, dict[str, Any]]:
    rows = ws.store.select(sa.select(quarantine_decisions).order_by(quarantine_decisions.c.id))
    return {r["batch_id"]: r for r in rows}


def _rows(ws: Workspace, batch_id: str | None = None) -> pl.DataFrame:
    table = ws.lake.read("quarantine")
    if table is None:
        return pl.DataFrame(schema={"_row": pl.Int64, "record": pl.String, "reasons": pl.String,
                                    "_batch_id": pl.String})
    if batch_id is not None:
        table = table.filter(pc.equal(table.column("_batch_id"), batch_id))
    return pl.from_arrow(table)


def list_quarantine(ws: Workspace, *, include_decided: bool = False) -> list[dict[str, Any]]:
    """One entry per batch with quarantined rows: counts, status, the most common reasons."""
    df = _rows(ws)
    if df.height == 0:
        return []
    decided = _decided(ws)
    meta = {r["batch_id"]: r for r in ws.store.select(sa.select(batches))}
    out = []
    for (batch_id,), group in df.group_by(["_batch_id"], maintain_order=True):
        decision = decided.get(batch_id)
        if decision and not include_decided:
            continue
        reasons = (group.select(pl.col("reasons").str.split("; ").explode()
                                .str.replace(r"^([^:]+):.*$", "$1").alias("r"))
                   .group_by("r").len().sort("len", descending=True))
        info = meta.get(batch_id, {})
        out.append({"batch_id": batch_id, "rows": group.height, "source": info.get("source"),
                    "status": decision["decision"] if decision else info.get("report", {}).get("status", "quarantined"),
                    "reasons": {r["r"]: r["len"] for r in reasons.head(5).to_dicts()},
                    "ingested_at": group["_ingested_at"].min() if "_ingested_at" in group.columns else None})
    return out


def show_quarantine(ws: Workspace, batch_id: str, *, limit: int = 50) -> dict[str, Any]:
    df = _rows(ws, batch_id)
    if df.height == 0:
        raise NotFound(f"no quarantined rows for batch {batch_id!r}", fix="see `tidal quarantine list`")
    decision = _decided(ws).get(batch_id)
    return {"batch_id": batch_id, "rows": df.height, "decision": decision,
            "sample": [{"row": r["_row"], "record": json.loads(r["record"]), "reasons": r["reasons"].split("; ")}
                       for r in df.sort("_row").head(limit).to_dicts()]}


def _check_open(ws: Workspace, batch_id: str) -> pl.DataFrame:
    df = _rows(ws, batch_id)
    if df.height == 0:
        raise NotFound(f"no quarantined rows for batch {batch_id!r}", fix="see `tidal quarantine list`")
    decision = _decided(ws).get(batch_id)
    if decision:
        raise StateError(f"batch {batch_id} was already {decision['decision']} by {decision['actor']}")
    return df


def release(ws: Workspace, spec: Spec, batch_id: str, *, actor: str, reason: str) -> dict[str, Any]:
    """Move a batch's quarantined rows into the lake under their original batch id.

    Rows are re-checked against the schema only (a person has judged the batch); rows that
    still fail stay in quarantine. Rows already in the lake (a retried release) are skipped.
    A lookup batch's rows go back to their lookup's table, checked against the lookup's columns.
    """
    df = _check_open(ws, batch_id)
    lookup = batch_lookup(ws, batch_id)
    table = "events" if lookup is None else lookup_table(lookup)
    schema = spec if lookup is None else lookup_spec(spec, lookup)
    records = [json.loads(r) for r in df["record"].to_list()]
    raw = pl.DataFrame(records, schema={k: pl.String for k in records[0]}) if records else pl.DataFrame()
    result = validate_batch(raw, schema)
    rows = df["_row"].to_numpy()
    accepted = result.accepted.with_columns(pl.Series("_row", rows[result.accepted["_row"].to_numpy()]))
    events = ws.lake.read(table, columns=["_batch_id", "_row"])
    if events is not None:
        present = pl.from_arrow(events).filter(pl.col("_batch_id") == batch_id)["_row"]
        accepted = accepted.filter(~pl.col("_row").is_in(present.implode()))
    version = ws.lake.version(table)
    if accepted.height:
        version = ws.lake.append(table, to_delta(accepted.with_columns(pl.col("_row").cast(pl.Int32)),
                                                 batch_id, datetime.now(timezone.utc)),
                                 commit_info={"tidal.batch_id": batch_id, "tidal.release": actor})
    still = result.quarantined.height
    ws.store.insert(quarantine_decisions, {"batch_id": batch_id, "decision": "released", "rows": accepted.height,
                                           "actor": actor, "reason": reason, "at": now()})
    out = {"batch_id": batch_id, "released": accepted.height, "still_failing": still,
           "events_version": version if lookup is None else ws.lake.version("events"),
           "failing_reasons": result.reason_counts if still else {}}
    if lookup is not None:
        out.update(lookup=lookup, lookup_version=version)
    return out


def drop(ws: Workspace, batch_id: str, *, actor: str, reason: str) -> dict[str, Any]:
    """Decide that a batch's quarantined rows never enter the lake (they stay, for the record)."""
    df = _check_open(ws, batch_id)
    ws.store.insert(quarantine_decisions, {"batch_id": batch_id, "decision": "dropped", "rows": df.height,
                                           "actor": actor, "reason": reason, "at": now()})
    return {"batch_id": batch_id, "dropped": df.height}


__all__ = ["drop", "list_quarantine", "release", "show_quarantine"]
