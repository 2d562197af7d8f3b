"""A version's held-out rows, and the rows it was fitted on, rebuilt from its run.

The run records the data versions and the split settings it used. Rebuilding the training
set from them gives the same rows, so evaluation, the report and the promotion gate judge
a version on exactly the rows it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from tidal.infra.workspace import Workspace
from tidal.registry.bundle import Bundle
from tidal.registry.registry import Registry
from tidal.spec import Spec, Training
from tidal.training.dataset import Split, labels_array, split_rows, training_table
from tidal.training.runs import RunTracker


@dataclass(frozen=True)
class HeldOut:
    """A version's held-out rows, rebuilt from its run, and its scores on them."""

    version: int
    run_id: str
    bundle: Bundle
    spec: Spec
    split: str
    table: pa.Table
    y: np.ndarray
    scores: np.ndarray

    def records(self, n: int = 50) -> list[dict[str, Any]]:
        """Up to ``n`` held-out rows as request records (for latency checks)."""
        names = [c for c in self.bundle.pipeline.features if c in self.table.column_names]
        return self.table.select(names).slice(0, n).to_pylist()


def score(bundle: Bundle, table: pa.Table) -> np.ndarray:
    return bundle.booster.predict(bundle.pipeline.transform_arrow(table))


def _rebuild(ws: Workspace, spec: Spec, version: int | str) -> tuple[dict[str, Any], Bundle, Spec, pa.Table,
                                                                     np.ndarray, Split]:
    row, bundle = Registry(ws).load(version)
    run = RunTracker(ws).get(row["run_id"])
    # the split settings the run used, not today's spec
    spec = spec.model_copy(update={"training": Training.model_validate(run["params"]["training"])})
    table = training_table(ws, spec, run["data_versions"])
    y = labels_array(table, spec)
    return row, bundle, spec, table, y, split_rows(table, spec, y)


def load_heldout(ws: Workspace, spec: Spec, version: int | str = "latest") -> HeldOut:
    """Rebuild ``version``'s held-out rows from its run's data versions and split settings, and score them."""
    row, bundle, spec, table, y, split = _rebuild(ws, spec, version)
    test = table.take(split.test)
    return HeldOut(version=row["version"], run_id=row["run_id"], bundle=bundle, spec=spec, split=split.kind,
                   table=test, y=y[split.test], scores=score(bundle, test))


def fitted_rows(ws: Workspace, spec: Spec, version: int | str) -> pa.Table:
    """The rows ``version`` was fitted on: its training and validation rows (early stopping, threshold)."""
    _, _, _, table, _, split = _rebuild(ws, spec, version)
    return table.take(np.sort(np.concatenate([split.train, split.valid])))


def row_keys(table: pa.Table, columns: list[str]) -> np.ndarray:
    """A 64-bit hash of each row's values in ``columns`` (as text, nulls included), to match rows across tables."""
    frame = pl.from_arrow(table.select(columns))
    return frame.select(pl.all().cast(pl.String)).hash_rows(seed=0).to_numpy()
