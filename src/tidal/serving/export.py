"""Edge export: a bundle as one ONNX file (pipeline and model), refused unless it scores like the bundle.

:func:`export_onnx` builds the graph (:mod:`tidal.serving.onnx_graph`), runs it in
onnxruntime on the check rows' raw columns, and compares its ``score`` with the bundle's own
predictions. The check rows are extended with edge cases built from them (each feature
missing in turn, each categorical feature set to a value outside its vocabulary), so the
missing-value and unknown-category paths are checked too, and so are the derived features'
branches (each numeric input of one at 0, -1, -2 and its bounds or limits). The file is
written only if the largest absolute difference is at most :data:`TOLERANCE` and its size
fits the spec's ``guardrails.max_model_size_mb``.

onnx, onnxmltools and onnxruntime are optional (``pip install 'tidal[export]'``) and are
imported only here, when an export runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tidal.errors import Problem, StateError
from tidal.features.pipeline import FeaturePipeline, category_text
from tidal.registry.bundle import Bundle

TOLERANCE = 1e-5  # largest accepted |onnx - native| on the score
EDGE_ROWS = 100  # rows per edge case added to the check rows
UNSEEN = "__tidal_unseen__"


@dataclass
class ExportReport:
    path: str
    version: int
    rows: int  # check rows, edge cases included
    max_abs_diff: float
    tolerance: float
    onnx_bytes: int
    bundle_bytes: int
    max_size_mb: float | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "version": self.version, "rows": self.rows, "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance, "onnx_bytes": self.onnx_bytes, "bundle_bytes": self.bundle_bytes,
                "max_size_mb": self.max_size_mb, "notes": self.notes}


def _require() -> None:
    missing = [m for m in ("onnx", "onnxmltools", "onnxruntime") if not _importable(m)]
    if missing:
        raise StateError(f"ONNX export needs {', '.join(missing)}, which is not installed",
                         fix="pip install 'tidal[export]'")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def onnx_inputs(pipeline: FeaturePipeline, table: pa.Table) -> dict[str, np.ndarray]:
    """The graph's inputs for the rows of ``table``: what a device feeds (see :mod:`tidal.serving.onnx_graph`)."""
    feeds: dict[str, np.ndarray] = {}
    n = table.num_rows
    for name, kind in pipeline.features.items():
        col = table.column(name) if name in table.column_names else pa.nulls(n)
        if kind == "categorical":
            texts = [category_text(v) for v in col.to_pylist()]
            feeds[name] = np.array(["" if t is None else t for t in texts], dtype=object)
        elif kind == "datetime":
            feeds[name] = _epoch_seconds(col)
        else:
            feeds[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    return feeds


def _epoch_seconds(col: Any) -> np.ndarray:
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        micros = col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        return pc.divide(micros.cast(pa.float64()), 1e6).to_numpy(zero_copy_only=False)
    raise StateError(f"datetime column of type {col.type} cannot be fed to the ONNX graph",
                     fix="type the check rows first (tidal does when it reads a file)")


def edge_cases(pipeline: FeaturePipeline, table: pa.Table, rows: int = EDGE_ROWS) -> pa.Table:
    """``table`` followed by its first ``rows`` rows with each feature missing in turn and each
    categorical feature set to an unseen value."""
    base = table.slice(0, rows)
    variants = [table]
    for name, kind in pipeline.features.items():
        if name not in base.column_names:
            continue
        i, typ = base.column_names.index(name), base.schema.field(name).type
        variants.append(base.set_column(i, name, pa.nulls(base.num_rows, typ)))
        if kind == "categorical" and (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            variants.append(base.set_column(i, name, pa.array([UNSEEN] * base.num_rows, typ)))
    for name, values in _derived_edges(pipeline).items():
        if name in base.column_names and pa.types.is_floating(base.schema.field(name).type):
            i, typ = base.column_names.index(name), base.schema.field(name).type
            cycle = [values[j % len(values)] for j in range(base.num_rows)]
            variants.append(base.set_column(i, name, pa.array(cycle, typ)))
    return pa.concat_tables(variants)


def _derived_edges(pipeline: FeaturePipeline) -> dict[str, list[float]]:
    """Per numeric input of a derived feature, the values where its transform changes branch."""
    edges: dict[str, list[float]] = {}
    for t in pipeline.derived.values():
        if t.kind in ("log", "clip", "bucketize", "ratio"):
            for col in t.inputs:
                edges.setdefault(col, [0.0, -1.0, -2.0])
            if t.kind == "bucketize":
                edges[t.column] += list(t.bounds)
            if t.kind == "clip":
                edges[t.column] += [v for v in (t.min, t.max) if v is not None]
    return edges


def parity(model_bytes: bytes, bundle: Bundle, table: pa.Table) -> float:
    """Largest |onnxruntime score - native prediction| over the rows of ``table``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    onnx_score = session.run(["score"], onnx_inputs(bundle.pipeline, table))[0]
    native = bundle.booster.predict(bundle.pipeline.transform_arrow(table))
    if not len(native):
        return 0.0
    diff = np.abs(onnx_score - native)
    if np.isnan(diff).any():
        return float("inf")
    return float(diff.max())


def export_onnx(bundle: Bundle, path: str | Path, *, check_rows: pa.Table, version: int,
                max_size_mb: float | None = None) -> ExportReport:
    """Write ``bundle`` as one ONNX graph to ``path`` after the parity and size checks (else refuse)."""
    from tidal.serving.onnx_graph import build_model, refuse_unsupported

    refuse_unsupported(bundle.pipeline)  # before anything else: no install fixes a Python transform
    _require()

    if check_rows.num_rows == 0:
        raise StateError("no rows to check the export's parity on", fix="pass --data FILE with some rows")
    model = build_model(bundle.pipeline, bundle.booster, bundle.signature)
    model.metadata_props.add(key="tidal_model_version", value=str(version))
    inputs = ", ".join(f"{n}: {k}" for n, k in bundle.pipeline.features.items())
    model.metadata_props.add(key="tidal_inputs", value=inputs)
    data = model.SerializeToString()
    table = edge_cases(bundle.pipeline, check_rows)
    diff = parity(data, bundle, table)
    report = ExportReport(path=str(path), version=version, rows=table.num_rows, max_abs_diff=diff, tolerance=TOLERANCE,
                          onnx_bytes=len(data), bundle_bytes=bundle.size_bytes, max_size_mb=max_size_mb)
    if any(k == "datetime" for k in bundle.pipeline.features.values()):
        report.notes.append("datetime inputs are seconds since the Unix epoch (UTC), as doubles")
    problems = []
    if diff > TOLERANCE:
        problems.append(Problem("parity", f"max |onnx - native| is {diff:.3g} on {table.num_rows} rows, "
                                          f"over the limit {TOLERANCE:g}"))
    if max_size_mb is not None and len(data) > max_size_mb * 1e6:
        problems.append(Problem("guardrails.max_model_size_mb", f"the ONNX file is {len(data) / 1e6:.2f} MB, "
                                                                f"over the budget of {max_size_mb:g} MB"))
    if problems:
        raise StateError(f"model version {version} cannot be exported to ONNX faithfully", problems=problems,
                         fix="keep serving it natively; a smaller model (fewer trees or leaves) or a larger "
                             "size budget may help", **report.as_dict())
    _write_atomic(Path(path), data)
    return report


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
