"""Feature engineering: one pipeline, fitted once and stored as JSON, used by training and serving alike;
lookups joined point-in-time, offline (:func:`join_lookups`) and online (:class:`OnlineLookups`) by one rule;
the online store of each entity's newest history features (:class:`OnlineStore`: in process or Redis)."""

from tidal.features.lookups import join_lookups
from tidal.features.online import OnlineLookups
from tidal.features.pipeline import FeaturePipeline
from tidal.features.store import InProcessStore, OnlineStore, RedisStore, open_store

__all__ = ["FeaturePipeline", "InProcessStore", "OnlineLookups", "OnlineStore", "RedisStore", "join_lookups",
           "open_store"]
