"""The monitor: drift of each feature and of the scores over a window of the prediction log,
realised performance where labels have arrived, stored results and alerts from the spec."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import roc_auc_score

from tidal.infra.metadata import alerts, monitor_results, now
from tidal.infra.workspace import Workspace
from tidal.monitoring.drift import categorical_drift, numeric_drift, psi
from tidal.registry.registry import Registry
from tidal.spec import Spec
from tidal.training import costs as C
from tidal.training.dataset import LABEL, LOG_ID, LOG_SCORE, LOG_TS


def recent_window(ws: Workspace, size: int, *, version: int | None = None) -> pa.Table | None:
    """The newest ``size`` answered predictions (shadow scores left out), of model ``version`` only if given."""
    preds = ws.lake.read("predictions")
    if preds is None or preds.num_rows == 0:
        return None
    if "_shadow" in preds.column_names:
        preds = preds.filter(pc.invert(pc.fill_null(preds.column("_shadow"), False)))
    if version is not None:
        preds = preds.filter(pc.equal(preds.column("_version"), version))
    preds = preds.sort_by([(LOG_TS, "ascending")])
    return preds.slice(max(0, preds.num_rows - size))


def labels_for(ws: Workspace, ids: pa.Array) -> dict[str, str]:
    labels = ws.lake.read("labels")
    if labels is None or labels.num_rows == 0:
        return {}
    labels = labels.filter(pc.is_in(labels.column(LOG_ID), value_set=ids)).sort_by([(LOG_TS, "ascending")])
    return dict(zip(labels.column(LOG_ID).to_pylist(), labels.column(LABEL).to_pylist()))


def _performance(spec: Spec, window: pa.Table, labels: dict[str, str], signature: dict[str, Any],
                 baseline: dict[str, Any]) -> dict[str, Any]:
    ids = window.column(LOG_ID).to_pylist()
    keep = [i for i, pid in enumerate(ids) if pid in labels]
    out: dict[str, Any] = {"n_labels": len(keep)}
    if len(keep) < spec.monitoring.min_labels:
        out["status"] = "not_enough_labels"
        return out
    scores = window.column(LOG_SCORE).to_numpy()[keep]
    raw = [labels[ids[i]] for i in keep]
    if spec.task == "binary":
        y = np.array([r == spec.positive_label for r in raw], dtype=float)
        m = C.binary_metrics(y, scores, signature["threshold"], spec.binary_costs)
        out.update(auc=m["auc"], cost_per_row=m["cost_per_row"], positive_rate=m["positive_rate"])
    else:
        y = np.array([float(r) for r in raw])
        m = C.regression_metrics(y, scores, signature["offset"], spec.regression_costs)
        out.update(rmse=m["rmse"], mae=m["mae"], cost_per_row=m["cost_per_row"])
    out["baseline_cost_per_row"] = baseline.get("cost_per_row")
    out["status"] = "ok"
    return out


def run_monitor(ws: Workspace, spec: Spec) -> dict[str, Any]:
    """Examine the newest window of predictions; store the result and any alerts; return the result."""
    mon = spec.monitoring
    row, bundle = Registry(ws).load("production")
    # the production version's own answers: not a canary's, nor those of a version pinned to an
    # older API (whose clients do not send the newer inputs), judged by this version's reference
    window = recent_window(ws, mon.window, version=row["version"])
    result: dict[str, Any] = {"model_version": row["version"], "n_predictions": 0, "features": {},
                              "alerts": []}
    if window is None or window.num_rows < mon.min_samples:
        result["status"] = "not_enough_predictions"
        result["n_predictions"] = 0 if window is None else window.num_rows
        return _store(ws, result)
    result["n_predictions"] = window.num_rows
    ref = bundle.reference["features"]
    for name, feat in spec.model_features.items():  # lookup features as the server joined them, too
        if name not in ref or name not in window.column_names:
            continue
        col = window.column(name)
        if feat.type == "numeric":
            result["features"][name] = numeric_drift(ref[name], col.to_numpy(zero_copy_only=False),
                                                     psi_threshold=mon.psi_threshold, p_value=mon.p_value)
        else:
            result["features"][name] = categorical_drift(ref[name], col.to_pylist(),
                                                         psi_threshold=mon.psi_threshold, p_value=mon.p_value)
    score_ref = bundle.reference["score"]
    scores = window.column(LOG_SCORE).to_numpy()
    score_shares = np.bincount(np.searchsorted(np.asarray(score_ref["edges"]), scores, side="right"),
                               minlength=len(score_ref["edges"]) + 1) / len(scores)
    result["score_psi"] = psi(np.asarray(score_ref["shares"]), score_shares)
    drifted = sorted(n for n, r in result["features"].items() if r["drifted"])
    result["drifted_features"] = drifted
    share = len(drifted) / max(len(result["features"]), 1)
    result["drifted_share"] = share
    if share > mon.max_drifted_share or result["score_psi"] > mon.psi_threshold:
        result["alerts"].append({"kind": "drift", "message": (
            f"{len(drifted)} of {len(result['features'])} features drifted ({', '.join(drifted) or 'none'}); "
            f"score PSI {result['score_psi']:.3f}")})
    perf = _performance(spec, window, labels_for(ws, window.column(LOG_ID).combine_chunks()),
                        bundle.signature, bundle.metrics.get("test", {}))
    result["performance"] = perf
    if perf.get("status") == "ok":
        base = perf.get("baseline_cost_per_row")
        if base is not None and perf["cost_per_row"] > base + abs(base) * mon.max_cost_increase:
            result["alerts"].append({"kind": "performance", "message": (
                f"realised cost per prediction {perf['cost_per_row']:.4f} exceeds training's {base:.4f} "
                f"by more than {mon.max_cost_increase:.0%}")})
        floor = spec.guardrails.min_metric
        if floor is not None and perf.get(floor.name) is not None:
            worse = perf[floor.name] < floor.value if floor.name in ("auc", "pr_auc") else perf[floor.name] > floor.value
            if worse:
                result["alerts"].append({"kind": "performance", "message": (
                    f"realised {floor.name} {perf[floor.name]:.4f} breaks the guardrail {floor.value}")})
    result["status"] = "alert" if result["alerts"] else "ok"
    return _store(ws, result)


def _store(ws: Workspace, result: dict[str, Any]) -> dict[str, Any]:
    at = now()
    result["at"] = at.isoformat()
    ws.store.insert(monitor_results, {"model_version": result.get("model_version"),
                                      "n_predictions": result.get("n_predictions", 0),
                                      "n_labels": result.get("performance", {}).get("n_labels", 0),
                                      "result": result, "at": at})
    for alert in result.get("alerts", []):
        ws.store.insert(alerts, {"kind": alert["kind"], "message": alert["message"], "details": {},
                                 "model_version": result.get("model_version"), "resolved": False, "at": at})
    return result
