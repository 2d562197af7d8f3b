"""Deployment, part two: the HTTP server (predict, feedback, health, metrics) and the predictor it runs."""

from tidal.serving.app import create_app, prediction_log_schema
from tidal.serving.predictor import Predictor
from tidal.serving.server import serve

__all__ = ["Predictor", "create_app", "prediction_log_schema", "serve"]
