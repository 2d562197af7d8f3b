"""Routing between model versions: production, a canary answering a sticky share of the
traffic, and a shadow scoring a copy of it; live statistics per version for the watchdog
that rolls back a version whose error rate or p99 latency breaks the spec's guardrails.

A :class:`Deployment` is immutable and replaced whole, so a request reads one consistent
set of predictors and a swap never mixes two.
"""

from __future__ import annotations

import threading
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidal.serving.predictor import Predictor

BUCKETS = 10_000


@dataclass(frozen=True)
class Deployment:
    production: Predictor | None = None
    canary: Predictor | None = None
    shadow: Predictor | None = None
    canary_share: float = 0.0

    @property
    def versions(self) -> tuple[int | None, int | None, int | None]:
        return tuple(p.version if p else None for p in (self.production, self.canary, self.shadow))  # type: ignore[return-value]

    def route(self, key: Any) -> Predictor | None:
        """The predictor that answers a request whose routing key is ``key`` (sticky: same key, same answer)."""
        if self.canary is None or self.production is None:
            return self.production or self.canary
        bucket = zlib.crc32(str(key).encode()) % BUCKETS
        return self.canary if bucket < self.canary_share * BUCKETS else self.production


class LiveStats:
    """Requests, failures and scoring latencies of each version over a sliding window."""

    def __init__(self, *, window: int = 2000) -> None:
        self.window = window
        self._lat: dict[int, deque[float]] = {}
        self._ok: dict[int, deque[bool]] = {}
        self._lock = threading.Lock()

    def record(self, version: int, seconds: float, ok: bool) -> None:
        lat = self._lat.get(version)
        if lat is None:
            with self._lock:
                lat = self._lat.setdefault(version, deque(maxlen=self.window))
                self._ok.setdefault(version, deque(maxlen=self.window))
        lat.append(seconds)
        self._ok[version].append(ok)

    def summary(self, version: int) -> dict[str, float]:
        lat, ok = list(self._lat.get(version, ())), list(self._ok.get(version, ()))
        if not ok:
            return {"requests": 0, "error_rate": 0.0, "p99_ms": 0.0}
        return {"requests": len(ok), "error_rate": 1 - sum(ok) / len(ok),
                "p99_ms": float(np.percentile(lat, 99) * 1000) if lat else 0.0}

    def reset(self, version: int) -> None:
        with self._lock:
            self._lat.pop(version, None)
            self._ok.pop(version, None)


def breach(stats: dict[str, float], *, max_error_rate: float, p99_ms: float, min_requests: int) -> str | None:
    """Why a version's live figures break the guardrails, or None (also None before enough requests)."""
    if stats["requests"] < min_requests:
        return None
    if stats["error_rate"] > max_error_rate:
        return f"live error rate {stats['error_rate']:.2%} over {stats['requests']} requests exceeds {max_error_rate:.2%}"
    if stats["p99_ms"] > p99_ms:
        return f"live p99 scoring latency {stats['p99_ms']:.2f} ms over {stats['requests']} requests exceeds {p99_ms} ms"
    return None
