"""Promotion guardrails from the spec: metric floor, bundle size and prediction latency."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tidal.registry.bundle import Bundle
from tidal.spec import Spec


def single_row_p99_ms(bundle: Bundle, records: list[dict[str, Any]], *, repeats: int = 200) -> float:
    """p99 of scoring one record in-process (pipeline + model), in milliseconds."""
    times = []
    for i in range(repeats):
        rec = [records[i % len(records)]]
        t0 = time.perf_counter()
        bundle.booster.predict(bundle.pipeline.transform_records(rec), num_threads=1)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 99) * 1000)


def check_guardrails(spec: Spec, bundle: Bundle, metrics: dict[str, Any],
                     sample: list[dict[str, Any]] | None = None) -> list[str]:
    """Every guardrail the model breaks, as a sentence; empty when it may be promoted."""
    g = spec.guardrails
    failures = []
    size_mb = bundle.size_bytes / 1e6
    if size_mb > g.max_model_size_mb:
        failures.append(f"bundle size {size_mb:.2f} MB exceeds the budget of {g.max_model_size_mb} MB")
    if g.min_metric is not None:
        value = metrics.get(g.min_metric.name)
        higher_better = g.min_metric.name in ("auc", "pr_auc")
        if value is None:
            failures.append(f"metric {g.min_metric.name} is not available for this model")
        elif (value < g.min_metric.value) if higher_better else (value > g.min_metric.value):
            failures.append(f"{g.min_metric.name} {value:.4f} does not reach the guardrail {g.min_metric.value}")
    records = sample or [{}]
    p99 = single_row_p99_ms(bundle, records)
    if p99 > g.p99_latency_ms:
        failures.append(f"p99 latency {p99:.2f} ms exceeds the budget of {g.p99_latency_ms} ms")
    return failures
