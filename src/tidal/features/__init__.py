"""Feature engineering: one pipeline, fitted once and stored as JSON, used by training and serving alike;
lookups joined point-in-time, offline (:func:`join_lookups`) and online (:class:`OnlineLookups`) by one rule;
history features over each entity's earlier events, offline (:func:`join_history`) and online
(:class:`OnlineHistory`, :func:`materialize`), from the same feature rows;
the online store of each entity's newest history features (:class:`OnlineStore`: in process or Redis);
derived features (log, clip, bucketize, ratio, target encoding, and Python functions registered with
:func:`register_transform`) computed by the same pipeline."""

from tidal.features.derived import register_transform
from tidal.features.history import join_history
from tidal.features.lookups import join_lookups
from tidal.features.online import OnlineLookups
from tidal.features.online_history import OnlineHistory, materialize
from tidal.features.pipeline import FeaturePipeline
from tidal.features.store import InProcessStore, OnlineStore, RedisStore, open_store

__all__ = ["FeaturePipeline", "InProcessStore", "OnlineHistory", "OnlineLookups", "OnlineStore", "RedisStore",
           "join_history", "join_lookups", "materialize", "open_store", "register_transform"]
