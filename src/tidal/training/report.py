"""The evaluation report of one model version, on its own held-out rows.

The held-out rows are rebuilt exactly as :func:`tidal.training.trainer.evaluate` does, from
the run's recorded data versions and split settings. The report holds: ML metrics; the
business cost at the chosen threshold and at 0.5; calibration (reliability bins and ECE);
curves (ROC, precision-recall, cost against threshold; residuals for regression), each at
most ``MAX_POINTS`` points; LightGBM gain importance by pipeline output name; metrics per
slice; fairness gaps against the spec's limits; and a comparison with the linear baseline
(its stored held-out metrics) and with a champion, both scored on the held-out rows
neither was fitted on (:mod:`tidal.training.champion`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from tidal.infra.workspace import Workspace
from tidal.registry.bundle import Bundle
from tidal.spec import Spec
from tidal.training import costs as C
from tidal.training.champion import compare_with_champion
from tidal.training.fairness import fairness_report
from tidal.training.heldout import HeldOut, load_heldout, score
from tidal.training.slices import slice_report
from tidal.training.trainer import decide, label_slope

__all__ = ["HeldOut", "evaluation_report", "load_heldout", "score"]

MAX_POINTS = 200
CALIBRATION_BINS = 10
# metric -> True when bigger is better
DIRECTIONS = {"auc": True, "pr_auc": True, "log_loss": False, "brier": False, "cost_per_row": False,
              "cost_per_row_at_0_5": False, "rmse": False, "mae": False, "cost_per_row_unadjusted": False}


def _thin(*arrays: np.ndarray, n: int = MAX_POINTS) -> list[list[float]]:
    """At most ``n`` evenly spaced points of parallel arrays, first and last kept."""
    size = len(arrays[0])
    idx = np.unique(np.linspace(0, size - 1, min(n, size)).round().astype(int)) if size else np.array([], int)
    return [[float(v) for v in a[idx]] for a in arrays]


def calibration(y: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability bins of equal width over [0, 1] and the expected calibration error."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        if count:
            mean_score, observed = float(scores[mask].mean()), float(y[mask].mean())
            ece += count / len(y) * abs(observed - mean_score)
        else:
            mean_score = observed = None
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "rows": count,
                     "mean_score": mean_score, "observed_rate": observed})
    return {"bins": rows, "ece": float(ece)}


def cost_curve(spec: Spec, y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, list[float]]:
    """Mean cost per row when acting at each threshold of a grid over [0, 1] (plus the chosen one and 0.5)."""
    c = spec.binary_costs
    grid = np.unique(np.concatenate([np.linspace(0, 1, MAX_POINTS - 2), [threshold, 0.5]]))
    order = np.argsort(-scores, kind="stable")
    s, yy = scores[order], y[order].astype(bool)
    tp = np.concatenate([[0], np.cumsum(yy)])
    fp = np.concatenate([[0], np.cumsum(~yy)])
    k = np.searchsorted(-s, -grid, side="right")  # rows with score >= t
    pos, neg = tp[-1], fp[-1]
    cost = (c.true_positive * tp[k] + c.false_positive * fp[k] + c.false_negative * (pos - tp[k])
            + c.true_negative * (neg - fp[k])) / max(len(y), 1)
    return {"threshold": grid.tolist(), "cost_per_row": cost.tolist()}


def _binary_curves(spec: Spec, y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    curves: dict[str, Any] = {"cost": cost_curve(spec, y, scores, threshold)}
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, scores)
        precision, recall, _ = precision_recall_curve(y, scores)
        fpr, tpr = _thin(fpr, tpr)
        recall, precision = _thin(recall[::-1], precision[::-1])
        curves.update(roc={"fpr": fpr, "tpr": tpr}, pr={"recall": recall, "precision": precision})
    return curves


def _regression_curves(spec: Spec, y: np.ndarray, pred: np.ndarray, offset: float) -> dict[str, Any]:
    residual = y - pred
    order = np.argsort(pred, kind="stable")
    xs, rs = _thin(pred[order], residual[order])
    counts, edges = np.histogram(residual, bins=30) if len(residual) else (np.zeros(0), np.zeros(1))
    offsets = np.unique(np.concatenate([np.quantile(residual, np.linspace(0.02, 0.98, 97)), [offset, 0.0]]))
    cost = [C.regression_cost(y, pred + o, spec.regression_costs) for o in offsets]
    return {"residuals": {"predicted": xs, "residual": rs},
            "residual_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
            "cost": {"offset": offsets.tolist(), "cost_per_row": cost}}


def importance(bundle: Bundle) -> list[dict[str, Any]]:
    """LightGBM gain per pipeline output column, largest first, with its share of the total."""
    gain = bundle.booster.feature_importance(importance_type="gain")
    names = bundle.pipeline.output_names
    if len(names) != len(gain):
        names = bundle.booster.feature_name()
    total = float(gain.sum()) or 1.0
    rows = [{"feature": n, "gain": float(g), "share": float(g) / total} for n, g in zip(names, gain)]
    return sorted(rows, key=lambda r: -r["gain"])


def _pick(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in DIRECTIONS if metrics.get(k) is not None}


def _at_least_as_good(name: str, value: float, other: float) -> bool:
    return value >= other if DIRECTIONS[name] else value <= other


def comparison(metrics: dict[str, Any], baseline: dict[str, Any] | None,
               champion: dict[str, Any] | None) -> dict[str, Any]:
    """Rows of (metric, candidate, baseline, champion), and whether the candidate is at least as good.

    Against the baseline, on all held-out rows; against the champion, on the rows neither was
    fitted on (``candidate_on_champion_rows`` is the candidate's figure there).
    """
    base = _pick(baseline["test"]) if baseline else {}
    has_champion = bool(champion and champion.get("metrics"))
    champ = _pick(champion["metrics"]) if has_champion else {}
    mine = _pick(champion["candidate_metrics"]) if has_champion else {}
    rows = []
    for name, value in _pick(metrics).items():
        row: dict[str, Any] = {"metric": name, "candidate": value, "baseline": base.get(name),
                               "champion": champ.get(name), "candidate_on_champion_rows": mine.get(name),
                               "bigger_is_better": DIRECTIONS[name]}
        if row["baseline"] is not None:
            row["better_than_baseline"] = _at_least_as_good(name, value, row["baseline"])
        if row["champion"] is not None and row["candidate_on_champion_rows"] is not None:
            row["better_than_champion"] = _at_least_as_good(name, row["candidate_on_champion_rows"], row["champion"])
        rows.append(row)
    return {"rows": rows, "baseline_model": baseline.get("model") if baseline else None,
            "champion": champion}


def evaluation_report(ws: Workspace, spec: Spec, version: int | str = "latest", *,
                      champion: int | str | None = None) -> dict[str, Any]:
    """Everything known about ``version`` on its held-out rows (see the module docstring)."""
    held = load_heldout(ws, spec, version)
    spec, sig, y, scores = held.spec, held.bundle.signature, held.y, held.scores
    metrics = decide(spec, sig, y, scores)
    metrics["label_slope"] = label_slope(spec, y, scores)
    rule = {k: sig[k] for k in ("threshold", "offset") if k in sig}
    report: dict[str, Any] = {
        "name": spec.name, "task": spec.task, "version": held.version, "run_id": held.run_id, "split": held.split,
        "rows": int(len(y)), "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "decision": rule, "metrics": metrics, "size_mb": held.bundle.size_bytes / 1e6,
        "importance": importance(held.bundle),
        "slices": slice_report(spec, rule, held.table, y, scores),
    }
    if spec.task == "binary":
        costs = spec.binary_costs
        report["costs"] = costs.model_dump()
        metrics["act_rate_at_0_5"] = float(np.mean(scores >= 0.5)) if len(y) else 0.0
        report["calibration"] = calibration(y, scores)
        report["curves"] = _binary_curves(spec, y, scores, sig["threshold"])
        report["fairness"] = fairness_report(spec, held.table, y, scores, sig["threshold"])
    else:
        report["costs"] = spec.regression_costs.model_dump()
        report["curves"] = _regression_curves(spec, y, scores, sig["offset"])
        report["fairness"] = fairness_report(spec, held.table, y, scores, 0.0)
    report["comparison"] = comparison(metrics, held.bundle.metrics.get("baseline"),
                                      None if champion is None else compare_with_champion(ws, spec, held, champion))
    return report
