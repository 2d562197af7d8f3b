"""Schema validation of a batch against the spec, vectorised in Polars.

Every row gets the list of reasons it fails (empty when it passes). A problem with the
batch as a whole (a required column missing) rejects the batch before anything is written.

Most rows of most batches pass, so the work is done in two passes: a cheap one over the
whole batch (column statistics, then row tests only where a column's statistics show a
possible failure) picks out a superset of the failing rows, and the exact rules, with their
messages, run on those few rows only. Turning a typed column back into text is costly, so
the text form of the batch (``ValidationResult.raw``) is built only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
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
    batch: pl.DataFrame = field(repr=False)  # the spec's columns as received, with _row
    reason_counts: dict[str, int] = field(default_factory=dict)
    dropped_columns: list[str] = field(default_factory=list)

    @cached_property
    def raw(self) -> pl.DataFrame:
        """Every row of the batch as text, with _row (built on first use)."""
        return self.batch.select("_row", pl.all().exclude("_row").cast(pl.String))

    def raw_rows(self, rows: pl.Series) -> pl.DataFrame:
        """The given rows of the batch as text: filtered first, so only they are converted."""
        picked = self.batch.filter(pl.col("_row").is_in(rows.implode()))
        return picked.select("_row", pl.all().exclude("_row").cast(pl.String))


def spec_columns(spec: Spec) -> dict[str, str]:
    """Every column tidal keeps, with its logical type (the target and keys included)."""
    cols = {name: f.type for name, f in spec.features.items()}
    cols[spec.target] = "numeric" if spec.task == "regression" else "label"
    if spec.entity_key:
        cols[spec.entity_key] = "key"
    if spec.event_time:
        cols[spec.event_time] = "datetime"
    for key in spec.lookup_keys:  # what the lookups join on; a key declared as a feature stays one
        cols.setdefault(key, "key")
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


def type_columns(df: pl.DataFrame, kinds: dict[str, str]) -> tuple[pl.DataFrame, dict[str, int]]:
    """The columns of ``kinds`` typed by ingestion's rules (batch scoring reads values as ingestion does).

    Returns the typed frame and, per column, how many values were present but not readable as
    the column's type (they are null in the typed frame).
    """
    typed = df.select([_typed(df, c, kind).alias(c) for c, kind in kinds.items()])
    textual = [c for c, kind in kinds.items()
               if kind in ("numeric", "boolean", "datetime") and df.schema[c] == pl.String]
    if not textual:
        return typed, {}
    raw_text = {c: pl.col(c).str.strip_chars().str.to_lowercase() for c in textual}
    present = df.select([(pl.col(c).is_not_null() & ~raw_text[c].is_in(["", "nan"])).alias(c) for c in textual])
    counts = pl.DataFrame({c: present[c] & typed[c].is_null() for c in textual}).sum().row(0, named=True)
    return typed, {c: n for c, n in counts.items() if n}


def _required(name: str, spec: Spec) -> bool:
    feat = spec.features.get(name)
    return name == spec.target or feat is None or not feat.nullable


def _rules(name: str, kind: str, spec: Spec) -> list[tuple[pl.Expr, pl.Expr]]:
    """The (failing condition, reason) pairs of column ``name``, over its typed value and ``raw::name``."""
    raw = pl.col(f"raw::{name}")
    raw_text = raw.cast(pl.String).str.strip_chars().str.to_lowercase()
    raw_present = raw.is_not_null() & ~raw_text.is_in(["", "nan"])
    value = pl.col(name)
    feat = spec.features.get(name)
    rules: list[tuple[pl.Expr, pl.Expr]] = []
    if kind in ("numeric", "boolean", "datetime"):
        rules.append((raw_present & value.is_null(),
                      pl.format(f"{name}: {{}} is not a valid {kind}", raw.cast(pl.String))))
    if _required(name, spec):
        rules.append((~raw_present, pl.lit(f"{name}: missing value (not nullable)")))
    if feat is not None and feat.min is not None:
        rules.append((value < feat.min, pl.format(f"{name}: {{}} is below min {feat.min}", value)))
    if feat is not None and feat.max is not None:
        rules.append((value > feat.max, pl.format(f"{name}: {{}} is above max {feat.max}", value)))
    if feat is not None and feat.allowed is not None:
        rules.append((value.is_not_null() & ~value.is_in(feat.allowed),
                      pl.format(f"{name}: {{}} is not an allowed value", value)))
    return rules


def _numeric_stats(df: pl.DataFrame, wanted: dict[str, str]) -> dict[str, dict[str, float | int | None]]:
    """Missing count, NaN count, min and max of every numeric column the spec reads as a number."""
    names = [c for c, kind in wanted.items() if kind == "numeric" and df.schema[c].is_numeric()]
    if not names:
        return {}
    exprs = []
    for i, c in enumerate(names):
        x = pl.col(c).cast(pl.Float64)  # min and max skip NaN, as the typed value (NaN made null) does
        nan = x.is_nan().sum() if df.schema[c].is_float() else pl.lit(0)
        exprs += [x.null_count().alias(f"n{i}"), nan.alias(f"nan{i}"), x.min().alias(f"lo{i}"), x.max().alias(f"hi{i}")]
    row = df.select(exprs).row(0)
    return {c: {"nulls": row[4 * i], "nans": row[4 * i + 1], "min": row[4 * i + 2], "max": row[4 * i + 3]}
            for i, c in enumerate(names)}


def _typed_fast(df: pl.DataFrame, name: str, kind: str, stats: dict[str, dict]) -> pl.Expr:
    """``_typed`` without its no-op steps: fill_nan where there is no NaN, strip on integers' text."""
    dtype = df.schema[name]
    if kind == "numeric" and name in stats and stats[name]["nans"] == 0:
        return pl.col(name).cast(pl.Float64)
    if kind in ("categorical", "label", "key") and dtype.is_integer():
        return pl.col(name).cast(pl.String)  # integers print without spaces and never as ""
    return _typed(df, name, kind)


def _suspects(df: pl.DataFrame, name: str, kind: str, spec: Spec, stats: dict[str, dict]) -> list[pl.Expr]:
    """Row tests that flag at least every row the exact rules of ``name`` fail (cheaper, never fewer)."""
    dtype = df.schema[name]
    feat = spec.features.get(name)
    value = pl.col(name)
    if name in stats:  # a number read as a number: missing means null or NaN, and "not valid" cannot happen
        s, out = stats[name], []
        if _required(name, spec) and s["nulls"] + s["nans"] > 0:
            out.append(value.is_null())
        if feat is not None and feat.min is not None and s["min"] is not None and s["min"] < feat.min:
            out.append(value < feat.min)
        if feat is not None and feat.max is not None and s["max"] is not None and s["max"] > feat.max:
            out.append(value > feat.max)
        return out
    if kind in ("categorical", "label", "key") and dtype.is_integer():  # integer text is never "" or "nan"
        out = [value.is_null()] if _required(name, spec) and df[name].null_count() else []
        if feat is not None and feat.allowed is not None:
            out.append(value.is_not_null() & ~value.is_in(feat.allowed))
        return out
    if (kind == "categorical" and dtype == pl.String and feat is not None and feat.allowed is not None
            and not pl.Series(feat.allowed, dtype=pl.String).str.strip_chars().str.to_lowercase()
            .is_in(["", "nan"]).any()):
        # the typed value is the stripped text, "" made null, and no allowed value reads as missing:
        # a value that is allowed passes every rule
        if _required(name, spec):
            return [value.is_null() | ~value.is_in(feat.allowed)]
        return [value.is_not_null() & ~value.is_in(feat.allowed)]
    return [cond for cond, _ in _rules(name, kind, spec)]


def validate_batch(df: pl.DataFrame, spec: Spec) -> ValidationResult:
    """Check a raw batch against the spec's schema and split it into accepted and quarantined rows."""
    wanted = spec_columns(spec)
    missing = [c for c in wanted if c not in df.columns]
    required_missing = [c for c in missing if c == spec.target or c in (spec.entity_key, spec.event_time)
                        or (c in spec.features and not spec.features[c].nullable)
                        or (c in spec.lookup_keys and c not in spec.features)]
    if required_missing:
        raise DataValidationError(
            f"batch rejected: {len(required_missing)} required column(s) missing",
            problems=[Problem(c, "column is missing from the batch", "add the column or mark it nullable in the spec")
                      for c in required_missing])
    df = df.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in missing])
    dropped = [c for c in df.columns if c not in wanted]
    df = df.select(list(wanted)).with_row_index("_row")

    stats = _numeric_stats(df, wanted)
    typed = df.select(["_row"] + [_typed_fast(df, c, kind, stats).alias(c) for c, kind in wanted.items()])
    checked = pl.concat([typed, df.drop("_row").select(pl.all().name.prefix("raw::"))], how="horizontal")
    flags = [e for c, kind in wanted.items() for e in _suspects(df, c, kind, spec, stats)]
    suspect = checked.lazy().filter(pl.any_horizontal(flags)).collect() if flags else checked.clear()
    reasons = [pl.when(cond).then(reason) for c, kind in wanted.items() for cond, reason in _rules(c, kind, spec)]
    # lazily, so that a column's rules share one reading of its raw text
    suspect = suspect.lazy().with_columns(pl.concat_list(reasons).list.drop_nulls().alias(REASONS)).collect()
    quarantined = (suspect.filter(pl.col(REASONS).list.len() > 0)
                   .select(["_row", pl.col("^raw::.*$").cast(pl.String).name.map(lambda c: c[5:]), REASONS]))
    accepted = typed
    if quarantined.height:
        keep = np.ones(df.height, dtype=bool)
        keep[quarantined["_row"].to_numpy()] = False
        accepted = typed.filter(pl.Series(keep))
    counts: dict[str, int] = {}
    if quarantined.height:
        exploded = quarantined.select(pl.col(REASONS).explode().str.split(":").list.first().alias("column"))
        counts = {r["column"]: r["count"] for r in exploded.group_by("column").len("count").to_dicts()}
    return ValidationResult(accepted=accepted, quarantined=quarantined, batch=df, reason_counts=counts,
                            dropped_columns=dropped)
