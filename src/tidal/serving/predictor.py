"""The predictor: a verified bundle turned into decisions, on the hot path (NumPy, no pandas)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tidal.registry.bundle import Bundle
from tidal.serving.decision import DecisionRule


class Predictor:
    """Scores records with one model version. Immutable once built, so a swap is one assignment."""

    def __init__(self, *, version: int, bundle: Bundle) -> None:
        self.version = version
        self.bundle = bundle
        self.rule = DecisionRule.from_signature(bundle.signature)  # the same rule as batch scoring
        rule = self.rule
        self.task, self.threshold, self.offset = rule.task, rule.threshold, rule.offset
        self.positive, self.negative, self.act, self.no_act = rule.positive, rule.negative, rule.act, rule.no_act
        self._booster = bundle.booster
        self._pipeline = bundle.pipeline

    def scores(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        X = self._pipeline.transform_records(records)
        return self._booster.predict(X, num_threads=1)

    def outputs(self, scores: np.ndarray) -> tuple[list[Any], list[float | None], list[Any]]:
        """(prediction, probability, decision) lists for ``scores``."""
        return self.rule.lists(scores)
