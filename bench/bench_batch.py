"""Batch scoring speed on 2 cores: features, model (LightGBM vs compiled by lleaves), end to end.

Target of the issue "Registry and serving at full depth": batch scoring >= 1M rows/s on 2
cores, features included. Two real workloads from ../shared/data:

- flights: 3M rows, regression on distance + origin + destination (two categoricals with
  hundreds of airports), the spec of bench_loop.py;
- fraud: the credit-card fraud data, 30 numeric features, binary ``Class``; scored end to
  end as the 284,807 rows tiled ten times (2.85M rows), so that compiling pays off as it
  does on a real batch.

Each figure is the best of three runs (the machine is shared); ``score_file`` figures
include everything: reading, typing, features, model, the decision and writing Parquet
(and, for ``auto``, compiling the model).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loop import FLIGHTS_SPEC  # noqa: E402
from tidal.data.validate import type_columns  # noqa: E402
from tidal.project import Project  # noqa: E402
from tidal.serving import compiled  # noqa: E402

TARGET = 1_000_000
FRAUD_COLUMNS = pq.read_schema(DATA / "creditcard_fraud_ulb.parquet").names
FRAUD_SPEC = {
    "name": "fraud", "task": "binary", "target": "Class",
    "features": {c: {"type": "numeric"} for c in FRAUD_COLUMNS if c != "Class"},
    "costs": {"true_positive": -100, "false_positive": 5, "true_negative": 0, "false_negative": 100},
    "training": {"num_boost_round": 200},
}


def best(fn, repeat: int = 3):  # noqa: ANN001, ANN201
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds / 1e6:.2f} M rows/s"


def trained(tmp: Path, spec: dict, source: Path) -> Project:
    root = tmp / spec["name"]
    root.mkdir()
    (root / "tidal.yaml").write_text(yaml.safe_dump(spec))
    project = Project.open(root / "tidal.yaml")
    project.ingest(source)
    project.promote(project.train().version, force=True)
    return project


def bench(name: str, project: Project, source: Path, scored: Path, tmp: Path) -> float:
    row, bundle = project.registry.load("production")
    pipeline, booster = bundle.pipeline, bundle.booster
    kinds = dict(pipeline.features)
    raw = pq.read_table(source, columns=list(kinds))
    n = raw.num_rows
    import polars as pl

    t_type, table = best(lambda: type_columns(pl.from_arrow(raw), kinds)[0].to_arrow())
    t_feat, X = best(lambda: pipeline.transform_arrow(table))
    t_native, native = best(lambda: booster.predict(X, num_threads=2))
    print(f"{name}: {n:,} rows, {X.shape[1]} model columns, {booster.num_trees()} trees")
    print(f"  typing (ingestion's rules)   {rate(n, t_type)}")
    print(f"  features (transform_arrow)   {rate(n, t_feat)}")
    print(f"  model, LightGBM (2 threads)  {rate(n, t_native)}")
    print(f"  features + LightGBM          {rate(n, t_feat + t_native)}")
    if compiled.available():
        for inline in (False, True):
            label = "inlined" if inline else "default"
            t_compile, predict = best(lambda: compiled.compile_booster(booster, inline=inline), repeat=1)  # noqa: B023
            t_comp, fast = best(lambda: predict(X))  # noqa: B023
            diff = float(np.max(np.abs(fast - native)))
            print(f"  model, compiled ({label}) {rate(n, t_comp)}  ({t_native / t_comp:.1f}x LightGBM; compiling "
                  f"took {t_compile:.2f} s; max |compiled - LightGBM| = {diff:.2g})")
            print(f"  features + compiled ({label}) {rate(n, t_feat + t_comp)}")
    else:
        print("  model, compiled (lleaves): not installed (pip install 'tidal[fast]')")
    out = tmp / f"{name}_out.parquet"
    m = pq.ParquetFile(scored).metadata.num_rows
    figures = {}
    for engine in ("native", "auto"):
        cpu = time.process_time()
        seconds, report = best(lambda: project.score(scored, out, engine=engine))  # noqa: B023
        cpu = (time.process_time() - cpu) / 3
        figures[engine] = m / seconds
        used = ", ".join(report.engines)
        extra = f", compiling {report.compile_seconds:.2f} s included" if report.compile_seconds else ""
        print(f"  score_file Parquet -> Parquet, engine={engine:<6} {m:,} rows in {seconds:.2f} s = "
              f"{rate(m, seconds)} (model: {used}{extra}; {cpu:.2f} CPU-s per run)")
    return max(figures.values())


def main() -> None:
    load = os.getloadavg()[0]
    print(f"batch scoring on {os.cpu_count()} cores (load average {load:.1f} at start)")
    with tempfile.TemporaryDirectory(prefix="tidal-bench-batch-") as tmp_name:
        tmp = Path(tmp_name)
        flights = trained(tmp, FLIGHTS_SPEC, DATA / "vega_flights_3m.parquet")
        fraud = trained(tmp, FRAUD_SPEC, DATA / "creditcard_fraud_ulb.parquet")
        fraud_table = pq.read_table(DATA / "creditcard_fraud_ulb.parquet")
        pq.write_table(pa.concat_tables([fraud_table] * 10), tmp / "fraud_x10.parquet")
        results = {
            "flights": bench("flights", flights, DATA / "vega_flights_3m.parquet",
                             DATA / "vega_flights_3m.parquet", tmp),
            "fraud": bench("fraud", fraud, DATA / "creditcard_fraud_ulb.parquet", tmp / "fraud_x10.parquet", tmp),
        }
        for project in (flights, fraud):
            project.close()
    for name, value in results.items():
        verdict = "meets" if value >= TARGET else "misses"
        print(f"target >= 1M rows/s end to end: {name} {value / 1e6:.2f} M rows/s, {verdict} it")


if __name__ == "__main__":
    main()
