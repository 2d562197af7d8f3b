"""Schema validation of a batch against the spec, vectorised in Polars.

Every row gets the list of reasons it fails (empty when it passes). A problem with the
batch as a whole (a required column missing) rejects the batch before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from tidal.errors import DataValidationError, Problem
from tidal.spec import Spec

_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]
REASONS = "_reasons"


@dataclass
class ValidationResult:
    """A batch split into typed, accepted rows and raw, quarantined rows with reasons."""

    accepted: pl.DataFrame  # typed, with _row
    quarantined: pl.DataFrame  # raw columns as text, plus _row and _reasons
    raw: pl.DataFrame  # every row of the batch as text, with _row
    reason_counts: dict[str, int] = field(default_factory=dict)
    dropped_columns: list[str] = field(default_factory=list)


def spec_columns(spec: Spec) -> dict[str, str]:
    """Every column tidal keeps, with its logical type (the target and keys included)."""
    cols = {name: f.type for name, f in spec.features.items()}
    cols[spec.target] = "numeric" if spec.task == "regression" else "label"
    if spec.entity_key:
        cols[spec.entity_key] = "key"
    if spec.event_time:
        cols[spec.event_time] = "datetime"
    return cols


def _as_text(df: pl.DataFrame, name: str) -> pl.Expr:
    expr = pl.col(name)
    if df.schema[name] != pl.String:
        expr = expr.cast(pl.String)
    return expr.str.strip_chars()


def _typed(df: pl.DataFrame, name: str, kind: str) -> pl.Expr:
    """Expression casting column ``name`` to its logical type; failures become null."""
    dtype = df.schema[name]
    if kind == "numeric":
        # NaN is a missing value, not a number: it meets the null checks like a blank
        if dtype.is_numeric():
            return pl.col(name).cast(pl.Float64).fill_nan(None)
        text = _as_text(df, name)
        return text.replace("", None).cast(pl.Float64, strict=False).fill_nan(None)
    if kind == "boolean":
        if dtype == pl.Boolean:
            return pl.col(name)
        text = _as_text(df, name).str.to_lowercase()
        return (pl.when(text.is_in(_TRUE)).then(True)
                .when(text.is_in(_FALSE)).then(False).otherwise(None))
    if kind == "datetime":
        if dtype == pl.Datetime or isinstance(dtype, pl.Datetime):
            expr = pl.col(name)
            return expr.dt.replace_time_zone("UTC") if dtype.time_zone is None else expr.dt.convert_time_zone("UTC")
        if dtype == pl.Date:
            return pl.col(name).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        return (_as_text(df, name).replace("", None)
                .str.to_datetime(strict=False, time_unit="us", time_zone="UTC"))
    # categorical, label, key: text; integral floats print without ".0"
    if dtype.is_float():
        return (pl.when(pl.col(name) == pl.col(name).round(0))
                .then(pl.col(name).cast(pl.Int64).cast(pl.String))
                .otherwise(pl.col(name).cast(pl.String)))
    return _as_text(df, name).replace("", None)


def validate_batch(df: pl.DataFrame, spec: Spec) -> ValidationResult:
    """Check a raw batch against the spec's schema and split it into accepted and quarantined rows."""
    wanted = spec_columns(spec)
    missing = [c for c in wanted if c not in df.columns]
    required_missing = [c for c in missing if c == spec.target or c in (spec.entity_key, spec.event_time)
                        or (c in spec.features and not spec.features[c].nullable)]
    if required_missing:
        raise DataValidationError(
            f"batch rejected: {len(required_missing)} required column(s) missing",
            problems=[Problem(c, "column is missing from the batch", "add the column or mark it nullable in the spec")
                      for c in required_missing])
    df = df.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in missing])
    dropped = [c for c in df.columns if c not in wanted]
    df = df.select(list(wanted)).with_row_index("_row")

    typed = df.select(["_row"] + [_typed(df, c, kind).alias(c) for c, kind in wanted.items()])
    reasons: list[pl.Expr] = []
    for name, kind in wanted.items():
        raw_text = pl.col(f"raw::{name}").cast(pl.String).str.strip_chars().str.to_lowercase()
        raw_present = pl.col(f"raw::{name}").is_not_null() & ~raw_text.is_in(["", "nan"])
        value = pl.col(name)
        if kind in ("numeric", "boolean", "datetime"):
            reasons.append(pl.when(raw_present & value.is_null()).then(
                pl.format(f"{name}: {{}} is not a valid {kind}", pl.col(f"raw::{name}").cast(pl.String))))
        feat = spec.features.get(name)
        required = feat is None or not feat.nullable
        if name == spec.target or required:
            reasons.append(pl.when(~raw_present).then(pl.lit(f"{name}: missing value (not nullable)")))
        if feat is not None and feat.min is not None:
            reasons.append(pl.when(value < feat.min).then(pl.format(f"{name}: {{}} is below min {feat.min}", value)))
        if feat is not None and feat.max is not None:
            reasons.append(pl.when(value > feat.max).then(pl.format(f"{name}: {{}} is above max {feat.max}", value)))
        if feat is not None and feat.allowed is not None:
            reasons.append(pl.when(value.is_not_null() & ~value.is_in(feat.allowed)).then(
                pl.format(f"{name}: {{}} is not an allowed value", value)))
    checked = pl.concat([typed, df.drop("_row").select(pl.all().name.prefix("raw::"))], how="horizontal")
    checked = checked.with_columns(pl.concat_list(reasons).list.drop_nulls().alias(REASONS))
    bad = pl.col(REASONS).list.len() > 0
    accepted = checked.filter(~bad).select(["_row", *wanted])
    quarantined = (checked.filter(bad)
                   .select(["_row", pl.col("^raw::.*$").cast(pl.String).name.map(lambda c: c[5:]), REASONS]))
    counts: dict[str, int] = {}
    if quarantined.height:
        exploded = quarantined.select(pl.col(REASONS).explode().str.split(":").list.first().alias("column"))
        counts = {r["column"]: r["count"] for r in exploded.group_by("column").len("count").to_dicts()}
    raw = df.select("_row", pl.all().exclude("_row").cast(pl.String))
    return ValidationResult(accepted=accepted, quarantined=quarantined, raw=raw, reason_counts=counts,
                            dropped_columns=dropped)
