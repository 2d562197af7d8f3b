"""Feature engineering: one pipeline, fitted once and stored as JSON, used by training and serving alike."""

from tidal.features.pipeline import FeaturePipeline

__all__ = ["FeaturePipeline"]
