"""Metrics per slice: per value of each categorical or boolean feature of the held-out rows.

Every row belongs to exactly one group of each feature (a missing value is the group
``(missing)``), so each feature's groups add up to the held-out rows. A feature with more
than ``MAX_GROUPS`` values keeps its largest groups and lumps the rest into ``(other)``;
sensitive attributes are never lumped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from sklearn.metrics import roc_auc_score

from tidal.features.pipeline import category_text
from tidal.spec import Spec
from tidal.training import costs as C

MISSING = "(missing)"
OTHER = "(other)"
MAX_GROUPS = 20


def _text(value: Any) -> str:
    """A category's text as the feature pipeline reads it, or MISSING."""
    text = category_text(value)
    return MISSING if text is None else text


def group_labels(table: pa.Table, name: str) -> np.ndarray:
    """The group of each row for feature ``name``, as text (``(missing)`` for nulls)."""
    if name not in table.column_names:
        return np.full(table.num_rows, MISSING, dtype=object)
    return np.array([_text(v) for v in table.column(name).to_pylist()], dtype=object)


def ordered_groups(labels: np.ndarray, *, lump: bool) -> tuple[np.ndarray, list[str]]:
    """(labels, group names largest first); with ``lump``, groups past ``MAX_GROUPS`` become ``(other)``."""
    values, counts = np.unique(labels.astype(str), return_counts=True)
    order = sorted(zip(values.tolist(), counts.tolist()), key=lambda vc: (-vc[1], vc[0]))
    names = [v for v, _ in order]
    if lump and len(names) > MAX_GROUPS:
        keep = set(names[: MAX_GROUPS - 1])
        labels = np.where(np.isin(labels.astype(str), list(keep)), labels, OTHER)
        names = names[: MAX_GROUPS - 1] + [OTHER]
    return labels, names


def group_metrics(spec: Spec, rule: dict[str, Any], y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """The metrics of one group at the model's decision rule."""
    out: dict[str, Any] = {"rows": int(len(y))}
    if spec.task == "binary":
        act = scores >= rule["threshold"]
        both = len(np.unique(y)) == 2
        out.update(positive_rate=float(y.mean()), act_rate=float(act.mean()),
                   auc=float(roc_auc_score(y, scores)) if both else None,
                   cost_per_row=C.binary_cost(y, act, spec.binary_costs))
    else:
        pred = scores + rule["offset"]
        out.update(target_mean=float(y.mean()), rmse=float(np.sqrt(np.mean((y - scores) ** 2))),
                   mae=float(np.mean(np.abs(y - scores))),
                   cost_per_row=C.regression_cost(y, pred, spec.regression_costs))
    return out


def slice_report(spec: Spec, rule: dict[str, Any], table: pa.Table, y: np.ndarray,
                 scores: np.ndarray) -> dict[str, Any]:
    """Per categorical/boolean feature (and sensitive attribute): its groups' metrics, largest first."""
    features = spec.model_features
    sensitive = set(spec.fairness.sensitive)
    names = [n for n, f in features.items() if f.type in ("categorical", "boolean")]
    out: dict[str, Any] = {}
    for name in names:
        labels, groups = ordered_groups(group_labels(table, name), lump=name not in sensitive)
        rows = []
        for g in groups:
            mask = labels == g
            rows.append({"value": g, "share": float(mask.mean()),
                         **group_metrics(spec, rule, y[mask], scores[mask])})
        out[name] = {"type": features[name].type, "sensitive": name in sensitive, "groups": rows}
    return out
