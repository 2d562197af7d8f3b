"""Monitoring: drift of features and scores against the training reference, realised performance
once labels arrive, stored results and alerts raised from the spec's thresholds."""

from tidal.monitoring.drift import categorical_drift, numeric_drift, psi
from tidal.monitoring.monitor import run_monitor

__all__ = ["categorical_drift", "numeric_drift", "psi", "run_monitor"]
