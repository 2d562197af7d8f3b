"""Fairness gaps over the spec's sensitive attributes, judged against the spec's limits.

At the model's cost-optimal threshold, for each sensitive attribute:

- demographic parity difference: the largest minus the smallest act rate (share of rows
  acted on) across its groups with at least ``min_group_rows`` rows;
- equal opportunity difference: the largest minus the smallest true positive rate (share
  of actual positives acted on) across its groups with at least ``min_group_rows`` actual
  positives.

Smaller groups are reported but not judged. A gap over its limit is a failure whose
message names the check, the attribute, the value and the limit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from tidal.spec import Spec
from tidal.training.slices import group_labels, ordered_groups

CHECKS = {"demographic_parity_difference": ("demographic parity difference", "act_rate",
                                            "max_demographic_parity_difference"),
          "equal_opportunity_difference": ("equal opportunity difference", "true_positive_rate",
                                           "max_equal_opportunity_difference")}


def _groups(labels: np.ndarray, y: np.ndarray, act: np.ndarray, min_rows: int) -> list[dict[str, Any]]:
    _, names = ordered_groups(labels, lump=False)
    out = []
    for g in names:
        mask = labels == g
        pos = y[mask] == 1
        n_pos = int(pos.sum())
        out.append({"value": g, "rows": int(mask.sum()), "positives": n_pos,
                    "act_rate": float(act[mask].mean()),
                    "true_positive_rate": float(act[mask][pos].mean()) if n_pos else None,
                    "judged_parity": bool(mask.sum() >= min_rows), "judged_opportunity": bool(n_pos >= min_rows)})
    return out


def _gap(attribute: str, groups: list[dict[str, Any]], key: str, label: str, limit: float | None,
         min_rows: int) -> dict[str, Any]:
    judged_flag = "judged_parity" if key == "act_rate" else "judged_opportunity"
    judged = [g for g in groups if g[judged_flag] and g[key] is not None]
    out: dict[str, Any] = {"value": None, "limit": limit, "passed": None, "highest": None, "lowest": None,
                           "groups_judged": len(judged)}
    if len(judged) < 2:
        unit = "rows" if key == "act_rate" else "actual positives"
        out["note"] = f"fewer than two groups with at least {min_rows} {unit}; not judged"
        return out
    hi = max(judged, key=lambda g: g[key])
    lo = min(judged, key=lambda g: g[key])
    value = hi[key] - lo[key]
    out.update(value=value, highest=hi["value"], lowest=lo["value"])
    if limit is not None:
        out["passed"] = bool(value <= limit + 1e-12)
        if not out["passed"]:
            what = "act rate" if key == "act_rate" else "true positive rate"
            out["message"] = (f"fairness: {label} {value:.3f} on {attribute} exceeds {limit:g} "
                              f"({what} {hi[key]:.2f} for {attribute}={hi['value']} vs {lo[key]:.2f} "
                              f"for {attribute}={lo['value']})")
    return out


def fairness_report(spec: Spec, table: pa.Table, y: np.ndarray, scores: np.ndarray,
                    threshold: float) -> dict[str, Any]:
    """Groups, gaps and verdicts per sensitive attribute; ``failures`` lists each broken limit."""
    f = spec.fairness
    attributes: dict[str, Any] = {}
    failures: list[str] = []
    if spec.task != "binary":
        return {"applicable": False, "attributes": {}, "failures": [], "passed": True,
                "note": "fairness gaps are measured for binary tasks"}
    act = scores >= threshold
    for name in f.sensitive:
        groups = _groups(group_labels(table, name), y, act, f.min_group_rows)
        entry: dict[str, Any] = {"groups": groups}
        for check, (label, key, limit_field) in CHECKS.items():
            gap = _gap(name, groups, key, label, getattr(f, limit_field), f.min_group_rows)
            entry[check] = gap
            if gap.get("message"):
                failures.append(gap["message"])
        attributes[name] = entry
    return {"applicable": True, "min_group_rows": f.min_group_rows, "threshold": float(threshold),
            "attributes": attributes, "failures": failures, "passed": not failures}
