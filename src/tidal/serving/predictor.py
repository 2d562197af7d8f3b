"""The predictor: a verified bundle turned into decisions, on the hot path (NumPy, no pandas)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tidal.registry.bundle import Bundle


class Predictor:
    """Scores records with one model version. Immutable once built, so a swap is one assignment."""

    def __init__(self, *, version: int, bundle: Bundle) -> None:
        self.version = version
        self.bundle = bundle
        sig = bundle.signature
        self.task = sig["task"]
        self.threshold = sig.get("threshold", 0.5)
        self.offset = sig.get("offset", 0.0)
        self.positive = sig.get("positive_class")
        self.negative = sig.get("negative_class")
        self.act, self.no_act = sig.get("act"), sig.get("no_act")
        self._booster = bundle.booster
        self._pipeline = bundle.pipeline

    def scores(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        X = self._pipeline.transform_records(records)
        return self._booster.predict(X, num_threads=1)

    def outputs(self, scores: np.ndarray) -> tuple[list[Any], list[float | None], list[Any]]:
        """(prediction, probability, decision) lists for ``scores``."""
        values = scores.tolist()
        if self.task == "binary":
            preds = [self.positive if s >= 0.5 else self.negative for s in values]
            decisions = [self.act if s >= self.threshold else self.no_act for s in values]
            return preds, values, decisions
        return values, [None] * len(values), (scores + self.offset).tolist()
