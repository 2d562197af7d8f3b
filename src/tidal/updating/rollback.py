"""Automatic rollback on the business metric: when the monitor raises a performance alert on
the production version, the previous production version is scored on the same recent
labelled predictions, and put back if it would have cost less."""

from __future__ import annotations

from typing import Any

import numpy as np

from tidal.errors import ApprovalRequired
from tidal.infra.workspace import Workspace
from tidal.monitoring.monitor import labels_for, recent_window
from tidal.registry.registry import Registry
from tidal.spec import Spec
from tidal.training import costs as C
from tidal.training.dataset import LOG_ID, LOG_SCORE


def _cost(spec: Spec, signature: dict[str, Any], y: np.ndarray, scores: np.ndarray) -> float:
    if spec.task == "binary":
        return C.binary_cost(y, scores >= signature["threshold"], spec.binary_costs)
    return C.regression_cost(y, scores + signature.get("offset", 0.0), spec.regression_costs)


def rollback_on_performance(ws: Workspace, spec: Spec, result: dict[str, Any]) -> dict[str, Any] | None:
    """Roll back if the monitor's performance alert is on production and the previous version
    does better on the same labelled predictions. None when there is nothing to decide."""
    if not spec.serving.auto_rollback or not any(a["kind"] == "performance" for a in result.get("alerts", [])):
        return None
    registry = Registry.for_spec(ws, spec)
    current = ws.store.production()
    if current is None or current["version"] != result.get("model_version"):
        return None
    earlier = [e for e in registry.history() if e["to_stage"] == "production" and e["version"] != current["version"]]
    if not earlier:
        return None
    window = recent_window(ws, spec.monitoring.window, version=current["version"])
    if window is None:
        return None
    labels = labels_for(ws, window.column(LOG_ID).combine_chunks())
    ids = window.column(LOG_ID).to_pylist()
    keep = [i for i, pid in enumerate(ids) if pid in labels]
    if len(keep) < spec.monitoring.min_labels:
        return None
    rows = window.take(keep)
    raw = [labels[ids[i]] for i in keep]
    y = np.array([r == spec.positive_label for r in raw], dtype=float) if spec.task == "binary" \
        else np.array([float(r) for r in raw])
    _, now_bundle = registry.load(current["version"])
    previous, prev_bundle = registry.load(earlier[-1]["version"])
    now_cost = _cost(spec, now_bundle.signature, y, rows.column(LOG_SCORE).to_numpy())
    prev_scores = prev_bundle.booster.predict(prev_bundle.pipeline.transform_arrow(rows))
    prev_cost = _cost(spec, prev_bundle.signature, y, prev_scores)
    decision = {"version": current["version"], "previous": previous["version"], "labelled_rows": len(keep),
                "cost_per_row": now_cost, "previous_cost_per_row": prev_cost, "rolled_back": False}
    if prev_cost < now_cost:
        try:
            registry.rollback(actor="tidal-monitor", reason=(
                f"auto-rollback on the business metric: cost per row {now_cost:.4f} vs {prev_cost:.4f} for version "
                f"{previous['version']} on the same {len(keep)} labelled predictions"))
        except ApprovalRequired as exc:  # the previous version was rejected since: report, keep production
            decision["refused"] = exc.message
            return decision
        decision["rolled_back"] = True
    return decision
