"""A candidate against a champion, on the candidate's held-out rows that neither model was fitted on.

Both models are scored at their own decision rule on the same rows. Held-out rows that
the champion was fitted on (its training or validation rows, rebuilt from its run and
matched by their values) are left out: on them the champion would look better than it is.
With fewer than ``MIN_ROWS`` rows left, no verdict is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tidal.errors import ModelNotFound
from tidal.infra.workspace import Workspace
from tidal.registry.registry import Registry
from tidal.spec import Spec
from tidal.training.heldout import HeldOut, fitted_rows, row_keys, score
from tidal.training.trainer import decide

MIN_ROWS = 30


def compare_with_champion(ws: Workspace, spec: Spec, held: HeldOut, champion: int | str) -> dict[str, Any]:
    """The champion's metrics and the candidate's on the rows neither was fitted on (``metrics``,
    ``candidate_metrics``), how many rows that is, and a note; no metrics when it cannot be judged."""
    try:
        row, bundle = Registry(ws).load(champion)
    except ModelNotFound as exc:
        return {"version": None, "note": exc.message}
    if row["version"] == held.version:
        return {"version": row["version"], "note": "the champion is this version"}
    seen = fitted_rows(ws, spec, row["version"])
    columns = [c for c in held.table.column_names if c in seen.column_names]
    unseen = ~np.isin(row_keys(held.table, columns), row_keys(seen, columns))
    n, total = int(unseen.sum()), len(held.y)
    out: dict[str, Any] = {"version": row["version"], "stage": row["stage"], "rows": n,
                           "rows_excluded": total - n}
    if n < MIN_ROWS:
        out["note"] = (f"only {n} of this version's {total} held-out rows were not fitted on by version "
                       f"{row['version']}: too few to compare")
        return out
    table, y = held.table.filter(unseen), held.y[unseen]
    out["metrics"] = decide(held.spec, bundle.signature, y, score(bundle, table))
    out["candidate_metrics"] = decide(held.spec, held.bundle.signature, y, held.scores[unseen])
    out["note"] = (f"both scored on this version's {total} held-out rows" if n == total else
                   f"both scored on the {n} of this version's {total} held-out rows that version "
                   f"{row['version']} was not fitted on")
    return out
