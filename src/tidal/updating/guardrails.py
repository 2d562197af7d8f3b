"""The promotion gate: the spec's guardrails (bundle size, prediction latency, metric floor),
fairness limits, and, for a manual promotion, business cost against the champion.

Every failure is one sentence that starts with the name of the check it breaks
("size:", "latency:", "metric floor:", "business cost:", "fairness:").
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tidal.infra.workspace import Workspace
from tidal.registry.bundle import Bundle
from tidal.spec import Spec
from tidal.training.champion import compare_with_champion
from tidal.training.fairness import fairness_report
from tidal.training.heldout import load_heldout, score
from tidal.updating.skew import skew_check
from tidal.training.trainer import decide


def single_row_p99_ms(bundle: Bundle, records: list[dict[str, Any]], *, repeats: int = 200, rounds: int = 3) -> float:
    """p99 of scoring one record in-process (pipeline + model), in milliseconds.

    The best of ``rounds`` measurements: the model's own cost, not the moment another
    process held the CPU (the live p99 under real load is the watchdog's business).
    """
    best = float("inf")
    for _ in range(rounds):
        times = []
        for i in range(repeats):
            rec = [records[i % len(records)]]
            t0 = time.perf_counter()
            bundle.booster.predict(bundle.pipeline.transform_records(rec), num_threads=1)
            times.append(time.perf_counter() - t0)
        best = min(best, float(np.percentile(times, 99) * 1000))
    return best


def check_guardrails(spec: Spec, bundle: Bundle, metrics: dict[str, Any],
                     sample: list[dict[str, Any]] | None = None) -> list[str]:
    """Every guardrail the model breaks, as a sentence; empty when it may be promoted."""
    g = spec.guardrails
    failures = []
    size_mb = bundle.size_bytes / 1e6
    if size_mb > g.max_model_size_mb:
        failures.append(f"size: bundle size {size_mb:.2f} MB exceeds the budget of {g.max_model_size_mb} MB")
    if g.min_metric is not None:
        value = metrics.get(g.min_metric.name)
        higher_better = g.min_metric.name in ("auc", "pr_auc")
        if value is None:
            failures.append(f"metric floor: metric {g.min_metric.name} is not available for this model")
        elif (value < g.min_metric.value) if higher_better else (value > g.min_metric.value):
            failures.append(f"metric floor: {g.min_metric.name} {value:.4f} does not reach the guardrail "
                            f"{g.min_metric.value}")
    records = sample or [{}]
    p99 = single_row_p99_ms(bundle, records)
    if p99 > g.p99_latency_ms:
        failures.append(f"latency: p99 latency {p99:.2f} ms exceeds the budget of {g.p99_latency_ms} ms")
    return failures


def check_fairness(spec: Spec, bundle: Bundle, table: Any, y: np.ndarray) -> list[str]:
    """Every fairness limit the model breaks on these labelled rows, at its own threshold."""
    if spec.task != "binary" or not spec.fairness.sensitive:
        return []
    return fairness_report(spec, table, y, score(bundle, table), bundle.signature["threshold"])["failures"]


def check_cost_against_champion(comparison: dict[str, Any]) -> list[str]:
    """A failure when the candidate's cost per row is worse than the champion's on the same rows
    (``comparison`` from :func:`tidal.training.champion.compare_with_champion`)."""
    if "metrics" not in comparison:  # no champion, or too few rows neither was fitted on
        return []
    mine, theirs = comparison["candidate_metrics"]["cost_per_row"], comparison["metrics"]["cost_per_row"]
    if mine <= theirs + 1e-12:
        return []
    return [f"business cost: held-out cost per row {mine:.4f} is worse than the champion's (version "
            f"{comparison['version']}) {theirs:.4f} on the same {comparison['rows']} held-out rows"]


def promotion_gate(ws: Workspace, spec: Spec, version: int | str) -> list[str]:
    """Every check a manual promotion of ``version`` fails, on the version's held-out rows:
    the guardrails, the fairness limits, and cost per row against the model in production
    (on the held-out rows neither was fitted on)."""
    held = load_heldout(ws, spec, version)
    metrics = decide(held.spec, held.bundle.signature, held.y, held.scores)
    failures = check_guardrails(spec, held.bundle, metrics, held.records())
    failures += check_fairness(spec, held.bundle, held.table, held.y)
    skew = skew_check(ws, held.bundle, held.version)
    if not skew["ok"]:
        failures.append(f"skew: features of {skew['feature_mismatches']} logged requests differ between the training "
                        f"and serving paths (first: {skew.get('example')}), or logged scores are not reproduced "
                        f"(max difference {skew.get('max_score_difference')})")
    if ws.store.production() is not None:
        failures += check_cost_against_champion(compare_with_champion(ws, spec, held, "production"))
    return failures
