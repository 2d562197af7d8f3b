"""Updating of logic: the retraining policy, champion/challenger on business cost, guardrails, promotion."""

from tidal.updating.guardrails import check_guardrails
from tidal.updating.retrain import retrain, triggers

__all__ = ["check_guardrails", "retrain", "triggers"]
