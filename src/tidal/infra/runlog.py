"""Reading run records: list and show, with duration and artifact files.

Runs are written by training (:class:`tidal.training.runs.RunTracker`); reading them is a
plain metadata query, kept on the ground floor so that the server can publish runs
without importing training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tidal.errors import NotFound
from tidal.infra.metadata import MetadataStore, runs


def with_duration(run: dict[str, Any]) -> dict[str, Any]:
    """The run with ``duration_s`` = ended_at - started_at in seconds (None while it runs)."""
    run = dict(run)
    ended, started = run.get("ended_at"), run.get("started_at")
    run["duration_s"] = (ended - started).total_seconds() if ended and started else None
    return run


def artifact_files(folder: str | None) -> list[dict[str, Any]]:
    """The files of a run's artifact folder with their sizes (empty if it is gone)."""
    path = Path(folder) if folder else None
    if path is None or not path.is_dir():
        return []
    return [{"file": f.name, "bytes": f.stat().st_size} for f in sorted(path.iterdir()) if f.is_file()]


def list_runs(store: MetadataStore) -> list[dict[str, Any]]:
    """Every run, oldest first, with its duration."""
    return [with_duration(r) for r in store.select(sa.select(runs).order_by(runs.c.started_at))]


def get_run(store: MetadataStore, run_id: str) -> dict[str, Any]:
    try:
        return store.one(sa.select(runs).where(runs.c.run_id == run_id), f"run {run_id}")
    except NotFound:
        raise NotFound(f"run {run_id} does not exist", fix="see `tidal runs list`") from None


def show_run(store: MetadataStore, run_id: str) -> dict[str, Any]:
    """One run with its duration, the model version it registered, and its artifact files."""
    run = with_duration(get_run(store, run_id))
    versions = [v["version"] for v in store.versions() if v["run_id"] == run_id]
    run["model_version"] = versions[0] if versions else None
    run["artifacts"] = artifact_files(run.get("artifact"))
    return run
