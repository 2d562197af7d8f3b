"""Batch-level checks, including the poisoning guard, each with its own severity.

A check ``validate()``s a batch of schema-valid rows into a :class:`CheckResult`. The
statistical ones compare it with the trusted :class:`~tidal.data.reference.Reference`:
shift of each feature, shift of the label mix, labels that stop following the production
model (flipping), floods of duplicates or near-duplicates and of rows far outside the
reference. Everything is vectorised in Polars/NumPy.

The statistical checks judge shares of rows, so :func:`run_checks` hands them a random
``STATISTICS_ROWS`` (100,000) rows of a larger batch: the sampling error of a share p is
sqrt(p(1 - p) / 100,000), at most 0.0016, and PSI's own sampling bias is about
bins / rows = 1e-4, both far below the thresholds (a few percent; PSI 0.25). The seed is
``CheckContext.sample_seed``, drawn afresh when not given, so that a poisoner cannot know which
rows will be looked at; a sampled result's message names the seed, which replays the check.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import polars as pl
from tidal.data.reference import Reference
from tidal.spec import Spec, Validation

STATISTICS_ROWS = 100_000  # the statistical checks judge a random sample of this many rows of a larger batch


@dataclass(frozen=True)
class CheckResult:
    check: str
    severity: str
    passed: bool
    message: str
    value: float | None = None
    threshold: float | None = None
    row_mask: np.ndarray | None = field(default=None, compare=False, repr=False)  # rows that fail, if row-level

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "passed": self.passed, "message": self.message,
                "value": self.value, "threshold": self.threshold}


@dataclass
class ReferenceModel:
    """The production model as the guard sees it: a scorer and how well labels followed it on held-out rows."""

    score: Callable[[pl.DataFrame], np.ndarray]
    label_slope: float


@dataclass
class CheckContext:
    spec: Spec
    reference: Reference | None
    trust: str = "high"
    model: ReferenceModel | None = None
    sample_seed: int | None = None  # seed of the rows sampled from a large batch; None: drawn afresh per batch

    @property
    def policy(self) -> Validation:
        return self.spec.validation

    def strict(self, threshold: float) -> float:
        """Thresholds of statistical checks tighten for low-trust sources."""
        return threshold * self.policy.low_trust_factor if self.trust == "low" else threshold

    def severity(self, severity: str) -> str:
        return "quarantine" if self.trust == "low" and severity == "warn" else severity

    @property
    def statistics_apply(self) -> bool:
        return self.reference is not None and self.reference.rows >= self.policy.min_reference_rows


def _result(name: str, severity: str, failed: bool, ok: str, bad: str, value: float | None = None,
            threshold: float | None = None, mask: np.ndarray | None = None) -> CheckResult:
    return CheckResult(name, severity, not failed, bad if failed else ok, value, threshold, mask)


def _random_rows(df: pl.DataFrame, n: int, seed: int | None) -> pl.DataFrame:
    """``n`` rows of ``df`` drawn at random without replacement (all of them if it has no more), in their order."""
    if df.height <= n:
        return df
    keep = np.zeros(df.height, dtype=bool)
    keep[np.random.default_rng(seed).choice(df.height, n, replace=False)] = True
    return df.filter(pl.Series(keep))  # a filter, not a gather: cheaper on a frame of many chunks


def statistics_rows(df: pl.DataFrame, ctx: CheckContext) -> pl.DataFrame:
    """The rows the statistical checks judge: all of a batch up to ``STATISTICS_ROWS``, else a random sample."""
    return _random_rows(df, STATISTICS_ROWS, ctx.sample_seed)


def _text(df: pl.DataFrame, name: str) -> pl.Expr:
    """Column ``name`` as text, without a cast when it is text already."""
    return pl.col(name) if df.schema[name] == pl.String else pl.col(name).cast(pl.String)


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(expected, 1e-4, None)
    a = np.clip(actual, 1e-4, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


# --- checks that need no reference --------------------------------------------------------

def check_nulls(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    limit = ctx.policy.max_null_share
    shares = df.select([pl.col(c).null_count() / max(df.height, 1) for c in ctx.spec.features if c in df.columns])
    out = []
    for name, share in shares.row(0, named=True).items() if df.height else []:
        out.append(_result(f"null_share:{name}", ctx.policy.null_severity, share > limit,
                           f"{name}: {share:.1%} nulls", f"{name}: {share:.1%} nulls exceeds {limit:.0%}", share, limit))
    return out


def check_unique_key(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    # an entity has one row per event time; without an entity key, equal times are normal
    keys = [k for k in (ctx.spec.entity_key, ctx.spec.event_time) if k and k in df.columns]
    if not ctx.policy.unique_key or ctx.spec.entity_key not in keys:
        return []
    repeated = df.select(pl.struct(keys).is_first_distinct().not_()).to_series().to_numpy()
    n = int(repeated.sum())
    return [_result("unique_key", ctx.policy.schema_severity, n > 0, f"({', '.join(keys)}) unique",
                    f"{n} rows repeat an earlier ({', '.join(keys)}) of the batch", n, 0, repeated)]


def check_freshness(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    t, max_age = ctx.spec.event_time, ctx.policy.max_age_days
    if not t or max_age is None or t not in df.columns or df.height == 0:
        return []
    newest = df[t].max()
    if newest is None:
        return []
    age = (datetime.now(timezone.utc) - newest).total_seconds() / 86400
    return [_result("freshness", ctx.policy.freshness_severity, age > max_age, f"newest event {age:.1f} days old",
                    f"newest event is {age:.1f} days old; the spec allows {max_age}", age, max_age)]


def check_volume(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    lo, hi = ctx.policy.min_rows, ctx.policy.max_rows
    bad = df.height < lo or (hi is not None and df.height > hi)
    return [_result("volume", ctx.policy.volume_severity, bad, f"{df.height} rows",
                    f"{df.height} rows is outside the expected {lo}..{hi if hi else 'any'}", df.height, None)]


# --- statistical checks against the trusted reference -----------------------------------------

def _bin_counts(df: pl.DataFrame, numeric: dict[str, Any]) -> dict[str, tuple[np.ndarray, int]]:
    """Per numeric column, the count of non-null values in each reference bin, and their number.

    The same counts as ``np.bincount(np.searchsorted(edges, values, side="right"))``, got from
    one pass of comparisons per edge (``#values < edge``) over all columns at once, without
    copying the columns to NumPy. Only for numeric columns and sorted, finite edges.
    """
    exprs, plan = [], {}
    for name, prof in numeric.items():
        edges = np.asarray(prof["edges"], dtype=float)
        if (name not in df.columns or not df.schema[name].is_numeric() or not np.isfinite(edges).all()
                or (np.diff(edges) <= 0).any()):
            continue
        x = pl.col(name).cast(pl.Float64)
        first = len(exprs)
        exprs.append(x.count().alias(f"{first}"))
        exprs += [(x < e).sum().alias(f"{first + 1 + i}") for i, e in enumerate(edges.tolist())]
        plan[name] = (first, len(edges))
    if not exprs:
        return {}
    row = df.select(exprs).row(0)
    out = {}
    for name, (first, k) in plan.items():
        size = int(row[first])
        below = [int(v) for v in row[first + 1:first + 1 + k]]
        out[name] = (np.diff(np.array([0, *below, size], dtype=np.int64)), size)
    return out


def check_feature_shift(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    ref = ctx.reference.profile
    limit = ctx.strict(ctx.policy.feature_psi)
    severity = ctx.severity(ctx.policy.feature_shift_severity)
    out = []
    counted = _bin_counts(df, ref["numeric"])
    for name, prof in ref["numeric"].items():
        if name not in df.columns:
            continue
        if name not in counted:  # not a numeric column, or unusual edges: bin in NumPy
            values = df[name].drop_nulls().to_numpy().astype(float)
            edges = np.asarray(prof["edges"])
            counted[name] = (np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1),
                             values.size)
        counts, size = counted[name]
        if size == 0:
            continue
        psi = _psi(np.asarray(prof["shares"]), counts / size)
        out.append(_result(f"feature_shift:{name}", severity, psi > limit, f"{name}: PSI {psi:.3f}",
                           f"{name} shifted from the reference: PSI {psi:.3f} > {limit:.3f}", psi, limit))
    for name, ref_shares in ref["categorical"].items():
        if name not in df.columns:
            continue
        counts = df.select(_text(df, name).fill_null("<null>"))[name].value_counts()
        batch = {str(r[name]): r["count"] / df.height for r in counts.to_dicts()}
        cats = sorted(set(ref_shares) | set(batch))
        psi = _psi(np.array([ref_shares.get(c, 0.0) for c in cats]), np.array([batch.get(c, 0.0) for c in cats]))
        out.append(_result(f"feature_shift:{name}", severity, psi > limit, f"{name}: PSI {psi:.3f}",
                           f"{name} shifted from the reference: PSI {psi:.3f} > {limit:.3f}", psi, limit))
    return out


def _label_values(df: pl.DataFrame, spec: Spec) -> np.ndarray:
    y = df[spec.target]
    if spec.task == "binary":
        return (y.cast(pl.String) == spec.positive_label).to_numpy().astype(float)
    return y.cast(pl.Float64).to_numpy()


def check_label_shift(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    ref, spec = ctx.reference.profile, ctx.spec
    limit = ctx.strict(ctx.policy.label_shift)
    y = _label_values(df, spec)
    if spec.task == "binary":
        p0, p = ref["positive_rate"], float(y.mean())
        change = abs(p - p0)
        se = math.sqrt(max(p0 * (1 - p0), 1e-9) / len(y))
        significant = change > 3 * se
        return [_result("label_shift", ctx.severity(ctx.policy.label_shift_severity), change > limit and significant,
                        f"positive rate {p:.3f} (reference {p0:.3f})",
                        f"positive rate {p:.3f} moved {change:.3f} from the reference {p0:.3f} (limit {limit:.3f})",
                        change, limit)]
    shift = abs(float(np.nanmean(y)) - ref["target_mean"]) / max(ref["target_std"], 1e-9)
    return [_result("label_shift", ctx.severity(ctx.policy.label_shift_severity), shift > limit,
                    f"target mean shift {shift:.3f} sd", f"target mean moved {shift:.3f} sd (limit {limit:.3f})",
                    shift, limit)]


def check_label_consistency(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    """Labels flipped at random stop following the model: the slope of label on score drops."""
    if ctx.model is None or not ctx.model.label_slope or ctx.model.label_slope <= 0:
        return []
    y = _label_values(df, ctx.spec)
    p = ctx.model.score(df)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    if len(y) < 10 or np.var(p) == 0:
        return []
    if ctx.spec.task == "binary":
        slope = float(np.cov(p, y)[0, 1] / np.var(p, ddof=1))
    else:
        slope = float(np.corrcoef(p, y)[0, 1])
    ratio = slope / ctx.model.label_slope
    floor = 1 - (1 - ctx.policy.label_consistency) * (ctx.policy.low_trust_factor if ctx.trust == "low" else 1)
    return [_result("label_consistency", ctx.policy.label_consistency_severity, ratio < floor,
                    f"labels follow the model at {ratio:.2f} of the held-out strength",
                    f"labels follow the production model at only {ratio:.2f} of the held-out strength "
                    f"(floor {floor:.2f}): flipped or wrong labels", ratio, floor)]


def _near_duplicate_parts(df: pl.DataFrame, spec: Spec) -> list[pl.Expr]:
    """The parts of the near-duplicate key: each feature (numbers rounded) and the target.

    A null stays a null, which is a value like any other: two rows are near-duplicates only
    if every part is equal, a null matching only a null.
    """
    parts = []
    for i, (name, feat) in enumerate(spec.features.items()):
        if name not in df.columns:
            continue
        if feat.type == "numeric":
            # two significant digits: rows that differ only by noise collide. One kernel, which
            # keeps 0, infinities and nulls as they are (dividing by a power of ten made the
            # infinities NaN, so +inf matched -inf)
            parts.append(pl.col(name).cast(pl.Float64).round_sig_figs(2).alias(f"p{i}"))
        else:
            parts.append(_text(df, name).alias(f"p{i}"))
    parts.append(_text(df, spec.target).alias("target"))
    return parts


def _duplicate_share(df: pl.DataFrame, spec: Spec) -> float:
    """The share of rows that repeat an earlier row's near-duplicate key (rounded numbers, nulls as values)."""
    if df.height == 0:
        return 0.0
    # distinct rows of the key's parts, in one pass: Polars compares nulls as equal to each
    # other only, NaN as equal to NaN, and 0.0 as equal to -0.0
    distinct = df.lazy().select(_near_duplicate_parts(df, spec)).collect().n_unique()
    return float(1 - distinct / df.height)


def check_duplicates(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    # repeats grow with the number of rows: compare the batch and the reference at one size
    ref = ctx.reference
    n = min(df.height, ref.sample.height)
    base = ref.own_rate(f"duplicates@{n}", lambda: _duplicate_share(ref.sample.tail(n), ctx.spec))
    share = _duplicate_share(_random_rows(df, n, ctx.sample_seed), ctx.spec)
    limit = ctx.strict(ctx.policy.duplicate_excess)
    excess = share - base
    return [_result("duplicates", ctx.severity(ctx.policy.duplicate_severity), excess > limit,
                    f"{share:.1%} near-duplicate rows (reference {base:.1%})",
                    f"{share:.1%} of rows are duplicates or near-duplicates, {excess:.1%} over the reference's "
                    f"{base:.1%} (limit {limit:.1%})", excess, limit)]


def _outlier_mask(df: pl.DataFrame, ref: dict[str, Any]) -> np.ndarray:
    exprs = []
    for name, prof in ref["numeric"].items():
        if name in df.columns:
            x = pl.col(name).cast(pl.Float64)
            exprs.append(((x < prof["low"]) | (x > prof["high"])).fill_null(False))
    for name, shares in ref["categorical"].items():
        if name in df.columns:
            exprs.append(~_text(df, name).fill_null("<null>").is_in(list(shares)))
    if not exprs or df.height == 0:
        return np.zeros(df.height, dtype=bool)
    return df.select(pl.any_horizontal(exprs)).to_series().to_numpy()


def check_outliers(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    ref = ctx.reference
    base = ref.own_rate("outliers", lambda: float(_outlier_mask(ref.sample, ref.profile).mean())
                        if ref.sample.height else 0.0)
    share = float(_outlier_mask(df, ref.profile).mean())
    limit = ctx.strict(ctx.policy.outlier_excess)
    excess = share - base
    return [_result("outliers", ctx.severity(ctx.policy.outlier_severity), excess > limit,
                    f"{share:.1%} rows outside the reference (reference {base:.1%})",
                    f"{share:.1%} of rows lie outside the reference's range or categories, {excess:.1%} over "
                    f"its own {base:.1%} (limit {limit:.1%})", excess, limit)]


BASIC_CHECKS = (check_nulls, check_unique_key, check_freshness, check_volume)
STATISTICAL_CHECKS = (check_feature_shift, check_label_shift, check_label_consistency, check_duplicates,
                      check_outliers)


def run_checks(df: pl.DataFrame, ctx: CheckContext) -> list[CheckResult]:
    """Every batch-level check that applies to ``df`` (schema-valid rows).

    The statistical checks judge :func:`statistics_rows` of the batch: a random sample of a
    batch over ``STATISTICS_ROWS`` rows, whose seed the results' messages name.
    """
    results = [r for check in BASIC_CHECKS for r in check(df, ctx)]
    if ctx.statistics_apply and df.height >= ctx.policy.min_batch_for_statistics:
        if ctx.sample_seed is None:
            ctx = replace(ctx, sample_seed=secrets.randbits(63))
        rows = statistics_rows(df, ctx)
        stats = [r for check in STATISTICAL_CHECKS for r in check(rows, ctx)]
        if rows.height < df.height:
            note = f" (judged on a random {rows.height:,} of the batch's {df.height:,} rows, seed {ctx.sample_seed})"
            stats = [replace(r, message=r.message + note) for r in stats]
        results += stats
    return results
