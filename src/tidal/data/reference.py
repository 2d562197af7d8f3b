"""The trusted reference: what accepted data looks like, for the statistical batch checks.

Built from the ``events`` table (only accepted or released rows ever reach it) at a given
version and cached in the workspace: a JSON profile (quantiles, bins, category shares,
label mix, range bounds) and a Parquet sample of up to ``SAMPLE_ROWS`` rows used to
measure the reference's own duplicate and outlier rates at a batch's size (the newest rows).
Those rates are computed at most once per loaded reference (``Reference.own_rate``): a batch that
is accepted changes the version, so ingestion measures them once per batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tidal.infra.workspace import Workspace
from tidal.spec import Spec

SAMPLE_ROWS = 20_000
BINS = 10
TAIL = 0.001  # range bounds: the 0.1% and 99.9% quantiles, widened by MARGIN of their span
MARGIN = 0.1


@dataclass
class Reference:
    version: int
    profile: dict[str, Any]
    sample: pl.DataFrame
    _rates: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    @property
    def rows(self) -> int:
        return int(self.profile["rows"])

    def own_rate(self, key: str, compute: Callable[[], float]) -> float:
        """A rate of the reference's own rows (``key`` names it, e.g. ``duplicates@20000``), computed once."""
        if key not in self._rates:
            self._rates[key] = compute()
        return self._rates[key]


def _profile(df: pl.DataFrame, spec: Spec) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": df.height, "numeric": {}, "categorical": {}}
    for name, feat in spec.features.items():
        if name not in df.columns:
            continue
        col = df[name]
        if feat.type == "numeric":
            values = col.drop_nulls().to_numpy().astype(float)
            if values.size == 0:
                continue
            lo, hi = np.quantile(values, [TAIL, 1 - TAIL])
            span = max(hi - lo, 1e-9)
            edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
            shares = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1) / values.size
            out["numeric"][name] = {"low": float(lo - MARGIN * span), "high": float(hi + MARGIN * span),
                                    "edges": edges.tolist(), "shares": shares.tolist(),
                                    "null_share": col.null_count() / max(df.height, 1)}
        elif feat.type in ("categorical", "boolean"):
            counts = col.cast(pl.String).fill_null("<null>").value_counts()
            total = max(df.height, 1)
            out["categorical"][name] = {str(r[name]): r["count"] / total for r in counts.to_dicts()}
    if spec.target in df.columns:
        y = df[spec.target]
        if spec.task == "binary":
            out["positive_rate"] = float((y.cast(pl.String) == spec.positive_label).mean())
        else:
            yv = y.cast(pl.Float64).drop_nulls()
            out["target_mean"], out["target_std"] = float(yv.mean()), float(yv.std() or 1.0)
    return out


def load_reference(ws: Workspace, spec: Spec, version: int | None = None) -> Reference | None:
    """The reference at ``version`` of ``events`` (default the newest), or None before any data."""
    version = ws.lake.version("events") if version is None else version
    if version is None:
        return None
    folder = ws.root / "reference"
    key = f"events-v{version}-{spec.digest()[:12]}"
    profile_path, sample_path = folder / f"{key}.json", folder / f"{key}.parquet"
    if profile_path.exists() and sample_path.exists():
        return Reference(version, json.loads(profile_path.read_text()), pl.read_parquet(sample_path))
    table = ws.lake.read("events", version=version)
    if table is None:
        return None
    df = pl.from_arrow(table)
    profile = _profile(df, spec)
    # the newest rows (the table is in commit order): batches are compared with recent data,
    # whose own rate of repeats (a daily flight, a weekly order) matches a batch's
    sample = df.tail(SAMPLE_ROWS)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(sample_path, lambda p: sample.write_parquet(p))
    _atomic_write(profile_path, lambda p: Path(p).write_text(json.dumps(profile)))
    return Reference(version, profile, sample)


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
