"""Drafting a spec from a data file (``tidal init``): types, ranges, categories, and columns
that look like identifiers or leaks flagged as excluded, for a person to review."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from tidal.data.files import read_file
from tidal.errors import DataValidationError
from tidal.spec import parse_spec

PARSE_SHARE = 0.98  # share of non-empty values that must parse for a type to be inferred
MAX_ALLOWED = 20  # categorical columns with at most this many values get an allowed list
LEAK_AUC = 0.98  # a single column separating the target this well is flagged as a leak


def _text(s: pl.Series) -> pl.Series:
    s = s.cast(pl.String).str.strip_chars()
    return s.set(s == "", None) if s.null_count() < len(s) else s


def _infer(s: pl.Series) -> tuple[str, pl.Series]:
    text = _text(s) if s.dtype == pl.String else s
    present = text.drop_nulls()
    if s.dtype.is_numeric():
        typed = s.cast(pl.Float64)
    elif s.dtype == pl.Boolean:
        return "boolean", s
    else:
        typed = text.cast(pl.Float64, strict=False)
    if len(present) and typed.drop_nulls().len() >= PARSE_SHARE * len(present):
        uniq = set(typed.drop_nulls().unique().to_list())
        return ("boolean" if uniq <= {0.0, 1.0} and len(uniq) == 2 else "numeric"), typed
    if s.dtype == pl.String and len(present):
        try:
            dt = text.str.to_datetime(strict=False, time_unit="us")
        except pl.exceptions.ComputeError:  # no date format fits the values
            dt = None
        if dt is not None and dt.drop_nulls().len() >= PARSE_SHARE * len(present):
            return "datetime", dt
    return "categorical", text


def _single_column_auc(values: pl.Series, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    x = values.cast(pl.Float64, strict=False).to_numpy()
    ok = np.isfinite(x)
    if ok.sum() < 10 or len(np.unique(y[ok])) < 2:
        return 0.5
    auc = roc_auc_score(y[ok], x[ok])
    return max(auc, 1 - auc)


def draft_spec(path: str | Path, target: str, *, name: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """A spec (as a mapping) drafted from ``path``, and notes on what a person should review."""
    path = Path(path)
    df = read_file(path)
    if target not in df.columns:
        raise DataValidationError(f"target column {target!r} is not in {path.name}",
                                  fix=f"choose one of: {', '.join(df.columns)}")
    notes: list[str] = []
    y_text = _text(df[target]) if df[target].dtype == pl.String else df[target].cast(pl.String)
    classes = y_text.drop_nulls().value_counts(sort=True)
    spec: dict[str, Any] = {"name": re.sub(r"[^A-Za-z0-9_-]", "_", name or path.stem) or "model",
                            "description": f"Drafted by `tidal init` from {path.name}; review before use."}
    y_num: np.ndarray | None = None
    if classes.height == 2:
        positive = str(classes[target][-1])  # the rarer class
        spec.update(task="binary", target=target, positive_class=positive)
        y_num = (y_text == positive).to_numpy().astype(float)
        spec["costs"] = {"true_positive": 0.0, "false_positive": 1.0, "true_negative": 0.0, "false_negative": 1.0}
        notes.append(f"binary task; positive class {positive!r} (the rarer one); set the real costs of errors")
    else:
        spec.update(task="regression", target=target, costs={"under_per_unit": 1.0, "over_per_unit": 1.0})
        notes.append("regression task; set the real costs of under- and over-prediction")
    features: dict[str, Any] = {}
    exclude: list[str] = []
    n = df.height
    for col in df.columns:
        if col == target:
            continue
        kind, typed = _infer(df[col])
        nulls = typed.null_count()
        distinct = typed.n_unique()
        if kind == "categorical" and n >= 20 and distinct >= 0.95 * n:
            exclude.append(col)
            notes.append(f"{col}: excluded, looks like an identifier ({distinct} distinct values in {n} rows)")
            if spec.get("entity_key") is None and re.search(r"id$|key$", col, re.I):
                spec["entity_key"] = col
            continue
        if kind == "datetime":
            if spec.get("event_time") is None:
                spec["event_time"] = col
                notes.append(f"{col}: used as the event time (time-aware splits)")
                continue
        if y_num is not None and kind in ("numeric", "boolean") and _single_column_auc(typed, y_num) >= LEAK_AUC:
            exclude.append(col)
            notes.append(f"{col}: excluded, predicts the target almost perfectly on its own (a likely leak)")
            continue
        feat: dict[str, Any] = {"type": kind, "nullable": bool(nulls > 0)}
        if kind == "numeric":
            lo, hi = typed.min(), typed.max()
            if lo is not None and lo >= 0:
                feat["min"] = 0.0
            feat["description"] = f"observed {lo} to {hi}"
        elif kind == "categorical":
            values = sorted(str(v) for v in typed.drop_nulls().unique().to_list())
            if len(values) <= MAX_ALLOWED:
                feat["allowed"] = values
            feat["description"] = f"{len(values)} distinct values"
        features[col] = feat
    spec["features"] = features
    spec["exclude"] = exclude
    spec["sources"] = [{"kind": "file", "path": str(path)}]
    parse_spec(spec, source="drafted spec")  # the draft must itself be a valid spec
    return spec, notes


def draft_yaml(spec: dict[str, Any], notes: list[str]) -> str:
    header = "# Drafted by `tidal init`. Review every line, then run `tidal spec show`.\n"
    header += "".join(f"# - {n}\n" for n in notes)
    return header + yaml.safe_dump(spec, sort_keys=False)
