"""The decision rule: scores to (prediction, probability, decision), one definition for online and batch.

Binary: ``prediction`` is the class at 0.5 (what the model thinks), ``probability`` the score,
``decision`` the business action at the cost-optimal threshold stored in the bundle's
signature (what to do). Regression: ``prediction`` is the value, ``probability`` is null and
``decision`` the value shifted by the cost-optimal offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DecisionRule:
    """The rule stored in a bundle's signature."""

    task: str
    threshold: float = 0.5
    offset: float = 0.0
    positive: Any = None
    negative: Any = None
    act: Any = None
    no_act: Any = None

    @classmethod
    def from_signature(cls, sig: dict[str, Any]) -> "DecisionRule":
        return cls(task=sig["task"], threshold=sig.get("threshold", 0.5), offset=sig.get("offset", 0.0),
                   positive=sig.get("positive_class"), negative=sig.get("negative_class"),
                   act=sig.get("act"), no_act=sig.get("no_act"))

    def flags(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Binary: (predicted positive, act) as boolean arrays."""
        return scores >= 0.5, scores >= self.threshold

    def values(self, scores: np.ndarray) -> np.ndarray:
        """Regression: the decision value of each score."""
        return scores + self.offset

    def lists(self, scores: np.ndarray) -> tuple[list[Any], list[float | None], list[Any]]:
        """(prediction, probability, decision) as Python lists, for a JSON response."""
        values = scores.tolist()
        if self.task == "binary":
            positive, act = self.flags(scores)
            preds = [self.positive if p else self.negative for p in positive.tolist()]
            decisions = [self.act if a else self.no_act for a in act.tolist()]
            return preds, values, decisions
        return values, [None] * len(values), self.values(scores).tolist()

    def arrow(self, scores: np.ndarray) -> dict[str, Any]:
        """prediction, probability and decision as Arrow arrays, for a batch (no per-row Python).

        Binary labels come dictionary-encoded (two values, one byte per row); they hold the
        same text as :meth:`lists`.
        """
        import pyarrow as pa

        if self.task == "binary":
            positive, act = self.flags(scores)
            classes = pa.array([_text(self.negative), _text(self.positive)], pa.string())
            actions = pa.array([_text(self.no_act), _text(self.act)], pa.string())
            return {"prediction": pa.DictionaryArray.from_arrays(pa.array(positive.view(np.int8)), classes),
                    "probability": pa.array(scores, pa.float64()),
                    "decision": pa.DictionaryArray.from_arrays(pa.array(act.view(np.int8)), actions)}
        return {"prediction": pa.array(scores, pa.float64()), "probability": pa.nulls(len(scores), pa.float64()),
                "decision": pa.array(self.values(scores), pa.float64())}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
