"""ML development and evaluation: training sets from exact lake versions, LightGBM fitting,
the business-cost decision rule, the linear baseline, evaluation (ML metrics, business cost,
calibration, slices, fairness, comparison with the baseline and the champion) and run tracking."""

from tidal.training.fairness import fairness_report
from tidal.training.heldout import load_heldout
from tidal.training.report import evaluation_report
from tidal.training.runs import RunTracker
from tidal.training.trainer import TrainResult, evaluate, train

__all__ = ["RunTracker", "TrainResult", "evaluate", "evaluation_report", "fairness_report", "load_heldout", "train"]
