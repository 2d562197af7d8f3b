"""Run tracking: every run's parameters, metrics, data versions, code version and duration."""

from __future__ import annotations

import subprocess
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import tidal
from tidal.errors import NotFound
from tidal.infra.metadata import now, runs
from tidal.infra.workspace import Workspace
from tidal.spec import Spec


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of tidal's source (with '+dirty' for local changes), else the package version."""
    here = Path(tidal.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"tidal-{tidal.__version__}"


class RunTracker:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def start(self, *, kind: str, spec: Spec, params: dict[str, Any], data_versions: dict[str, Any]) -> str:
        run_id = now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.ws.store.insert(runs, {"run_id": run_id, "kind": kind, "status": "running", "params": params,
                                    "metrics": {}, "data_versions": data_versions, "code_version": code_version(),
                                    "spec_sha256": spec.digest(), "started_at": now()})
        return run_id

    def finish(self, run_id: str, *, status: str, metrics: dict[str, Any], artifact: str | None = None) -> None:
        self.ws.store.update(runs, runs.c.run_id == run_id,
                             {"status": status, "metrics": metrics, "artifact": artifact, "ended_at": now()})

    def get(self, run_id: str) -> dict[str, Any]:
        try:
            return self.ws.store.one(sa.select(runs).where(runs.c.run_id == run_id), f"run {run_id}")
        except NotFound:
            raise NotFound(f"run {run_id} does not exist", fix="see `tidal runs`") from None

    def list(self) -> list[dict[str, Any]]:
        return self.ws.store.select(sa.select(runs).order_by(runs.c.started_at))
