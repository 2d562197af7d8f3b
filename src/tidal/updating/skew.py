"""The training/serving skew check, run before every promotion.

Logged serving requests (the prediction log keeps each request's raw feature values) are
turned into features twice, through the serving path (``transform_records``, what the
server runs on request dicts) and the training path (``transform_arrow``, what training
and batch scoring run on Arrow columns), and must give identical values. Rows the
candidate's own version answered must also score exactly as logged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from tidal.infra.workspace import Workspace
from tidal.monitoring.monitor import recent_window
from tidal.registry.bundle import Bundle

SAMPLE_ROWS = 2000


def skew_check(ws: Workspace, bundle: Bundle, version: int, *, rows: int = SAMPLE_ROWS) -> dict[str, Any]:
    """Compare both feature paths on the newest logged requests; ``ok`` is False on any difference."""
    window = recent_window(ws, rows)
    if window is None or window.num_rows == 0:
        return {"ok": True, "rows": 0, "note": "no logged requests yet"}
    features = [n for n in bundle.pipeline.features if n in window.column_names]
    table = window.select(features)
    offline = bundle.pipeline.transform_arrow(table)
    online = bundle.pipeline.transform_records(table.to_pylist())
    same = (offline == online) | (np.isnan(offline) & np.isnan(online))
    bad_rows = np.flatnonzero(~same.all(axis=1))
    result: dict[str, Any] = {"ok": bad_rows.size == 0, "rows": window.num_rows, "feature_mismatches": int(bad_rows.size)}
    if bad_rows.size:
        col = int(np.flatnonzero(~same[bad_rows[0]])[0])
        result["example"] = {"row": int(bad_rows[0]), "feature": bundle.pipeline.output_names[col],
                             "training_path": float(offline[bad_rows[0], col]),
                             "serving_path": float(online[bad_rows[0], col])}
    mine = window.filter(pc.equal(window.column("_version"), version))
    if mine.num_rows:
        rescored = bundle.booster.predict(bundle.pipeline.transform_arrow(mine.select(features)))
        logged = mine.column("_score").to_numpy()
        worst = float(np.max(np.abs(rescored - logged)))
        result["score_rows"], result["max_score_difference"] = mine.num_rows, worst
        result["ok"] = result["ok"] and worst <= 1e-9
    return result
