"""Training sets: built from exact lake versions, so any run's data can be rebuilt bit for bit.

A training set is the ``events`` table at a recorded version, with the spec's lookups joined
point-in-time at their own recorded versions and its history features computed from that
same events version (each row from its entity's earlier events only), plus, for retraining,
the labelled rows of the prediction log (predictions joined with their feedback labels at
recorded versions, carrying the lookup and history values the server used). The newest
``holdout_share`` of those labelled rows is kept out to compare champion and challenger on
data neither was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.model_selection import train_test_split

from tidal.errors import StateError
from tidal.features.history import history_events, join_history
from tidal.features.lookups import join_lookups
from tidal.infra.workspace import Workspace
from tidal.spec import Spec

_ARROW_TYPES = {"numeric": pa.float64(), "categorical": pa.string(), "boolean": pa.bool_(),
                "datetime": pa.timestamp("us", tz="UTC")}

# columns of the prediction log and the label log
LOG_ID, LOG_TS, LOG_VERSION, LOG_SCORE, LOG_PREDICTION, LOG_DECISION = (
    "_id", "_ts", "_version", "_score", "_prediction", "_decision")
LABEL = "_label"


def labels_array(table: pa.Table, spec: Spec) -> np.ndarray:
    col = table.column(spec.target)
    if spec.task == "binary":
        return np.asarray(pc.equal(col.cast(pa.string()), spec.positive_label).to_numpy(zero_copy_only=False),
                          dtype=np.float64)
    return col.cast(pa.float64()).to_numpy(zero_copy_only=False)


def labelled_log(ws: Workspace, spec: Spec, *, predictions_version: int | None,
                 labels_version: int | None) -> pa.Table | None:
    """Logged predictions that have a label, oldest first, with the label in the target column."""
    if predictions_version is None or labels_version is None:
        return None
    preds = ws.lake.read("predictions", version=predictions_version)
    labels = ws.lake.read("labels", version=labels_version)
    if preds is None or labels is None or labels.num_rows == 0:
        return None
    # the latest label given for each prediction id wins
    labels = labels.sort_by([(LOG_TS, "ascending")])
    ids = labels.column(LOG_ID).to_pylist()
    last = {pid: i for i, pid in enumerate(ids)}
    labels = labels.take(sorted(last.values())).select([LOG_ID, LABEL])
    if "_shadow" in preds.column_names:
        preds = preds.filter(pc.invert(pc.fill_null(preds.column("_shadow"), False)))
    joined = preds.join(labels, keys=LOG_ID, join_type="inner").sort_by([(LOG_TS, "ascending"), (LOG_ID, "ascending")])
    if joined.num_rows == 0:
        return None
    target_type = pa.float64() if spec.task == "regression" else pa.string()
    joined = joined.append_column(spec.target, joined.column(LABEL).cast(target_type))
    if spec.event_time and spec.event_time not in joined.column_names:
        joined = joined.append_column(spec.event_time, joined.column(LOG_TS))
    return joined


def split_holdout(table: pa.Table, share: float) -> tuple[pa.Table, pa.Table]:
    """(older rows, newest ``share`` of rows) of a table sorted oldest first."""
    n_hold = int(round(table.num_rows * share))
    return table.slice(0, table.num_rows - n_hold), table.slice(table.num_rows - n_hold)


def training_table(ws: Workspace, spec: Spec, data_versions: dict[str, Any]) -> pa.Table:
    """The exact training set named by ``data_versions`` (as recorded in a run)."""
    newest = ws.lake.version("events")
    wanted = data_versions.get("events")
    if newest is None:
        raise StateError("there is no accepted data to train on", fix="run `tidal ingest FILE` first")
    if wanted is not None and not 0 <= wanted <= newest:
        raise StateError(f"events version {wanted} does not exist", fix=f"choose a version from 0 to {newest}")
    events = ws.lake.read("events", version=wanted)
    if events is None or events.num_rows == 0:
        raise StateError("there is no accepted data to train on", fix="run `tidal ingest FILE` first")
    history = history_events(events, spec) if spec.history else None  # the same events version: reproducible
    keep = list(dict.fromkeys(c for c in (*spec.features, spec.target, spec.entity_key, spec.event_time,
                                          *spec.lookup_keys) if c))
    events = events.select([c for c in keep if c in events.column_names])
    # a feature the spec gained after older batches were ingested is missing (null) in them
    for name, feat in spec.features.items():
        if name not in events.column_names:
            events = events.append_column(name, pa.nulls(events.num_rows, _ARROW_TYPES[feat.type]))
    # lookup features as of each row's event time, from the recorded lookup versions
    events = join_lookups(events, spec, ws.lake, data_versions.get("lookups"))
    # history features of each row: its entity's events strictly before it, in the same version
    if history is not None:
        events = join_history(events, spec, history)
    log = labelled_log(ws, spec, predictions_version=data_versions.get("predictions"),
                       labels_version=data_versions.get("labels"))
    if log is not None:
        older, _ = split_holdout(log, data_versions.get("holdout_share", 0.0))
        older = older.select([c for c in events.column_names if c in older.column_names])
        for name in events.column_names:
            if name not in older.column_names:
                older = older.append_column(name, pa.nulls(older.num_rows, events.schema.field(name).type))
        events = pa.concat_tables([events, older.select(events.column_names).cast(events.schema)])
    return events


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    kind: str


def split_rows(table: pa.Table, spec: Spec, y: np.ndarray) -> Split:
    """Time-aware split (newest rows held out) with an event time, else a stratified random one."""
    n = table.num_rows
    t = spec.training
    idx = np.arange(n)
    if spec.event_time and spec.event_time in table.column_names:
        order = np.argsort(table.column(spec.event_time).to_numpy(zero_copy_only=False), kind="stable")
        n_test = int(n * t.test_size)
        rest, test = order[: n - n_test], order[n - n_test:]
        n_valid = int(len(rest) * t.valid_size)
        return Split(rest[: len(rest) - n_valid], rest[len(rest) - n_valid:], test, "time")
    strat = y if spec.task == "binary" else None
    rest, test = train_test_split(idx, test_size=t.test_size, random_state=t.seed, stratify=strat)
    strat_rest = y[rest] if spec.task == "binary" else None
    train, valid = train_test_split(rest, test_size=t.valid_size, random_state=t.seed + 1, stratify=strat_rest)
    return Split(np.sort(train), np.sort(valid), np.sort(test), "stratified")
