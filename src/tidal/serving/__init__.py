"""Deployment, part two: the HTTP server (predict, feedback, health, metrics) and the predictor it runs;
batch scoring of files and tables (:func:`score_file`) and the ONNX export for the edge (:func:`export_onnx`),
all on one decision rule (:class:`DecisionRule`)."""

from tidal.serving.app import create_app, prediction_log_schema
from tidal.serving.batch import ScoreReport, score_file
from tidal.serving.decision import DecisionRule
from tidal.serving.export import ExportReport, export_onnx
from tidal.serving.predictor import Predictor
from tidal.serving.server import serve

__all__ = ["DecisionRule", "ExportReport", "Predictor", "ScoreReport", "create_app", "export_onnx",
           "prediction_log_schema", "score_file", "serve"]
