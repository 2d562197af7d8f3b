"""The ingester: reads every source of the spec, validates and commits each batch, then
saves the source's position (so a crash replays a batch, which is then a no-op)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tidal.data.checks import ReferenceModel
from tidal.data.ingest import IngestReport, ingest_frame
from tidal.data.sources import Source, open_source
from tidal.infra.workspace import Workspace
from tidal.spec import Spec


def open_sources(spec: Spec, base: Path, *, names: Iterable[str] | None = None) -> list[Source]:
    wanted = set(names) if names else None
    out = []
    for config in spec.sources:
        if config.kind == "http":
            continue
        source = open_source(config, base)
        if wanted is None or source.name in wanted:
            out.append(source)
    return out


def ingest_once(ws: Workspace, spec: Spec, sources: list[Source], *, model: ReferenceModel | None = None,
                on_batch: Callable[[Source, IngestReport], None] | None = None) -> list[IngestReport]:
    """One pass over every source: ingest each new batch, then save the source's position."""
    reports = []
    for source in sources:
        state = ws.store.source_state(source.name)
        for batch in source.read(state):
            report = ingest_frame(ws, spec, batch.frame, batch_id=batch.batch_id, source=source.name,
                                  content_sha256=batch.content_sha256, trust=source.trust, model=model)
            state = source.commit(batch, state)
            ws.store.save_source_state(source.name, state)
            reports.append(report)
            if on_batch:
                on_batch(source, report)
    return reports


def follow(ws: Workspace, spec: Spec, sources: list[Source], *, interval_s: float = 1.0,
           max_batches: int | None = None, until: Callable[[], bool] | None = None,
           model: ReferenceModel | None = None,
           on_batch: Callable[[Source, IngestReport], None] | None = None) -> int:
    """Ingest continually until ``max_batches`` batches landed or ``until()`` is true; return the count."""
    count = 0
    try:
        while True:
            reports = ingest_once(ws, spec, sources, model=model, on_batch=on_batch)
            count += len(reports)
            if (max_batches is not None and count >= max_batches) or (until and until()):
                return count
            if not any(not r.already_ingested for r in reports):  # nothing new: wait before polling again
                time.sleep(interval_s)
    finally:
        for s in sources:
            s.close()


