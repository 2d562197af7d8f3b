"""Run tracking: every run's parameters, metrics, data versions, code version, duration and artifacts;
shown one at a time or two side by side."""

from __future__ import annotations

import subprocess
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import tidal
from tidal.infra import runlog
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

    def finish(self, run_id: str, *, status: str, metrics: dict[str, Any], artifact: str | None = None,
               params: dict[str, Any] | None = None) -> None:
        """Close a run; ``params``, when given, replace the ones recorded at the start (choices made while
        fitting: the imbalance weighting, the tuned parameters)."""
        values = {"status": status, "metrics": metrics, "artifact": artifact, "ended_at": now()}
        if params is not None:
            values["params"] = params
        self.ws.store.update(runs, runs.c.run_id == run_id, values)

    def get(self, run_id: str) -> dict[str, Any]:
        return runlog.get_run(self.ws.store, run_id)

    def list(self) -> list[dict[str, Any]]:
        """Every run, oldest first, with its duration in seconds (None while running)."""
        return runlog.list_runs(self.ws.store)

    def show(self, run_id: str) -> dict[str, Any]:
        """One run with its duration, the model version it registered, and its artifact files with sizes."""
        return runlog.show_run(self.ws.store, run_id)

    def compare(self, run_a: str, run_b: str) -> dict[str, Any]:
        """Two runs side by side: every parameter, metric and data version, and what differs."""
        a, b = self.show(run_a), self.show(run_b)
        out: dict[str, Any] = {"runs": [run_a, run_b]}
        for section in ("params", "metrics", "data_versions"):
            out[section] = _side_by_side(flatten(a.get(section) or {}), flatten(b.get(section) or {}))
        out["run"] = _side_by_side(*({k: r.get(k) for k in ("kind", "status", "code_version", "spec_sha256",
                                                              "duration_s", "model_version")} for r in (a, b)))
        return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (lists stay whole)."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _side_by_side(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        row: dict[str, Any] = {"key": key, "a": va, "b": vb, "differs": va != vb}
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb)):
            row["difference"] = vb - va
        rows.append(row)
    return rows
