"""ML development and evaluation: training sets from exact lake versions, LightGBM fitting,
the business-cost decision rule, evaluation and run tracking."""

from tidal.training.runs import RunTracker
from tidal.training.trainer import TrainResult, evaluate, train

__all__ = ["RunTracker", "TrainResult", "evaluate", "train"]
