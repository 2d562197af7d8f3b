"""Updating of logic: the retraining policy, champion/challenger on business cost, the promotion gate
(guardrails, fairness, cost against the champion), promotion."""

from tidal.updating.guardrails import check_fairness, check_guardrails, promotion_gate
from tidal.updating.retrain import retrain, triggers

__all__ = ["check_fairness", "check_guardrails", "promotion_gate", "retrain", "triggers"]
