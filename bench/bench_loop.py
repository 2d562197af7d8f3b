"""Walking-skeleton figures: ingestion with validation, training, batch scoring, HTTP latency.

Reads ../shared/data (3M flights, bank marketing); prints one line per figure.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))

from specs import BANK_SPEC  # noqa: E402
from tidal.project import Project  # noqa: E402

FLIGHTS_SPEC = {
    "name": "flights", "task": "regression", "target": "delay", "event_time": "date",
    "features": {"distance": {"type": "numeric", "min": 0}, "origin": {"type": "categorical"},
                 "destination": {"type": "categorical"}},
    "training": {"num_boost_round": 100, "early_stopping_rounds": 10},
}


def _project(root: Path, spec: dict) -> Project:
    root.mkdir(parents=True)
    (root / "tidal.yaml").write_text(yaml.safe_dump(spec))
    return Project.open(root / "tidal.yaml")


def bench_ingest_and_score(tmp: Path) -> None:
    src = DATA / "vega_flights_3m.parquet"
    project = _project(tmp / "flights", FLIGHTS_SPEC)
    t = time.perf_counter()
    report = project.ingest(src)[0]
    secs = time.perf_counter() - t
    print(f"ingest  vega_flights_3m.parquet: {report.rows_total:,} rows validated and committed in {secs:.2f} s "
          f"= {report.rows_total / secs / 1e6:.2f} M rows/s ({report.rows_quarantined} quarantined; "
          f"first batch: schema and batch checks, no reference yet)")
    # the same file as a 1M-row trusted history, then 2M rows checked against it as well
    guarded = _project(tmp / "flights_guarded", FLIGHTS_SPEC)
    frame = pl.read_parquet(src)
    frame.head(1_000_000).write_parquet(tmp / "history.parquet")
    frame.slice(1_000_000).write_parquet(tmp / "new.parquet")
    guarded.ingest(tmp / "history.parquet")
    t = time.perf_counter()
    report = guarded.ingest(tmp / "new.parquet")[0]
    secs = time.perf_counter() - t
    print(f"ingest  the last 2M rows against the first 1M as reference: {secs:.2f} s = "
          f"{report.rows_total / secs / 1e6:.2f} M rows/s, {len(report.checks)} batch checks "
          f"({len(report.failed_checks)} failed: {', '.join(c['check'] for c in report.failed_checks) or 'none'}; "
          f"status {report.status})")
    guarded.close()
    t = time.perf_counter()
    result = project.train()
    print(f"train   flights regression on {result.metrics['data_rows']:,} rows: {time.perf_counter() - t:.1f} s "
          f"(RMSE {result.metrics['test']['rmse']:.2f})")
    _, bundle = project.registry.load(result.version)
    table = project.ws.lake.read("events").slice(0, 1_000_000)
    t = time.perf_counter()
    X = bundle.pipeline.transform_arrow(table)
    mid = time.perf_counter()
    bundle.booster.predict(X)
    end = time.perf_counter()
    print(f"score   1M rows in-process: features {mid - t:.2f} s + model {end - mid:.2f} s "
          f"= {1e6 / (end - t) / 1e6:.2f} M rows/s")
    project.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_http(tmp: Path) -> None:
    project = _project(tmp / "bank", BANK_SPEC)
    project.ingest(DATA / "bank_marketing_full.csv")
    t = time.perf_counter()
    result = project.train()
    print(f"train   bank marketing ({result.metrics['data_rows']:,} rows): {time.perf_counter() - t:.1f} s, "
          f"AUC {result.metrics['test']['auc']:.3f}")
    project.promote(result.version, force=True)
    rows = pl.read_csv(DATA / "bank_marketing_full.csv").head(500).drop("y", "duration").to_dicts()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tidal.cli", "serve", "--spec", str(project.spec_path),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)

        def run(n: int, out: list[float]) -> None:
            with httpx.Client(base_url=url) as c:
                for i in range(n):
                    t0 = time.perf_counter()
                    c.post("/v1/predict", json=rows[i % len(rows)])
                    out.append(time.perf_counter() - t0)

        for conc, n in ((1, 2000), (8, 500)):
            lat: list[float] = []
            threads = [threading.Thread(target=run, args=(n, lat)) for _ in range(conc)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            secs = time.perf_counter() - t
            lat.sort()
            print(f"http    /v1/predict single row, concurrency {conc}: {len(lat) / secs:,.0f} req/s, "
                  f"p50 {statistics.median(lat) * 1e3:.2f} ms, p99 {lat[int(len(lat) * .99)] * 1e3:.2f} ms "
                  f"(Python httpx client on the same 2 cores)")
        body = (rows * 2)[:1000]
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(5):  # warm-up: the first large request starts compiling the model in the background
                c.post("/v1/predict", json=body)
            time.sleep(5)  # steady state: the compiled model is in use
            t = time.perf_counter()
            for _ in range(20):
                c.post("/v1/predict", json=body)
        print(f"http    1,000-row request: {(time.perf_counter() - t) / 20 * 1e3:.1f} ms each, steady state "
              "(after 5 warm-up requests; the client's JSON encoding included)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        project.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench_ingest_and_score(Path(tmp))
        bench_http(Path(tmp))


if __name__ == "__main__":
    main()
