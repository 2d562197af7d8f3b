"""Lineage of a model version: where it came from and everything that happened to it.

The run that trained it (data versions, spec hash, code version, training rows) is read from
the run record, not copied into the registry; the registry adds the bundle's manifest hash,
the champion it was compared with, its approval status and its audit trail.
"""

from __future__ import annotations

from typing import Any

from tidal.errors import NotFound
from tidal.infra import runlog
from tidal.infra.metadata import MetadataStore

FORCED = "guardrails skipped with --force"


def version_lineage(store: MetadataStore, row: dict[str, Any], *, trail: list[dict[str, Any]],
                    approval: dict[str, Any]) -> dict[str, Any]:
    """The lineage of the version ``row``; ``trail`` is the registry's whole audit trail, oldest first."""
    try:
        run = runlog.with_duration(runlog.get_run(store, row["run_id"]))
    except NotFound:
        run = None  # a run record deleted by hand: show what the registry itself knows
    run_metrics = (run or {}).get("metrics") or {}
    rows = dict(run_metrics.get("rows") or {})
    if "data_rows" in run_metrics:
        rows["total"] = run_metrics["data_rows"]
    mine = [e for e in trail if e["version"] == row["version"]]
    return {
        "version": row["version"], "stage": row["stage"], "created_at": row["created_at"],
        "run_id": row["run_id"],
        "run": None if run is None else {k: run.get(k) for k in ("kind", "status", "started_at", "ended_at",
                                                                 "duration_s")},
        "data_versions": (run or {}).get("data_versions"),
        "spec_sha256": (run or {}).get("spec_sha256"),
        "code_version": (run or {}).get("code_version"),
        "training_rows": rows or None,
        "metrics": row["metrics"],
        "bundle": {"path": row["bundle_path"], "manifest_sha256": row["manifest_sha256"]},
        "champion": _champion(row["version"], run_metrics.get("challenge"), trail),
        "approval": approval,
        "history": [{k: e[k] for k in ("event", "from_stage", "to_stage", "actor", "reason", "at")} for e in mine],
    }


def _champion(version: int, challenge: dict[str, Any] | None, trail: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The champion ``version`` was compared with: the one retraining measured it against, else the
    production version its promotion replaced (the promotion gate compares with it); None if neither."""
    if challenge:
        return {"version": challenge.get("champion"), "compared_by": "retrain",
                "rows": challenge.get("holdout_rows"),
                "champion_cost_per_row": (challenge.get("champion_holdout") or {}).get("cost_per_row"),
                "challenger_cost_per_row": (challenge.get("challenger_holdout") or {}).get("cost_per_row"),
                "outcome": challenge.get("message")}
    stages = [e for e in trail if e["event"] == "stage"]
    for i, event in enumerate(stages):
        if event["version"] != version or event["to_stage"] != "production":
            continue
        # a promotion writes the step-down of the old production version just before, in one transaction
        before = stages[i - 1] if i else None
        replaced = (before["version"] if before and before["from_stage"] == "production"
                    and before["actor"] == event["actor"] and before["reason"] == event["reason"] else None)
        forced = FORCED in event["reason"]
        return {"version": replaced, "compared_by": "nothing (--force skipped the gate)" if forced
                else "promotion gate" if replaced is not None else "nothing (no version was in production)",
                "at": event["at"], "actor": event["actor"]}
    return None
