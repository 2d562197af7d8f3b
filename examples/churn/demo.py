"""The whole tidal loop on Telco churn, end to end, on embedded defaults (``make demo``).

spec -> ingest (one clean batch, one with broken rows) -> train -> evaluate -> promote ->
serve (a real server on a socket) -> traffic (later customers, part of it with prices
raised 40% to cause drift) -> feedback labels -> monitor -> retrain and promote -> the
running server picks up the new version -> stop (the prediction log is flushed).

Run it as a script, or call :func:`run` (the integration test does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import yaml

HERE = Path(__file__).resolve().parent
DATA = HERE / "telco_customer_churn.csv"
PRICE_RISE = 1.4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(step: str, text: str) -> None:
    print(f"[{step:>8}] {text}", flush=True)


def _prepare(workdir: Path, history_share: float, seed: int) -> tuple[Path, pl.DataFrame, Path]:
    """Write the spec and two batches: the known history (plus broken rows) and the future customers."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    spec = yaml.safe_load((HERE / "tidal.yaml").read_text())
    spec["sources"] = [{"kind": "file", "path": "history.csv"}]
    spec_path = workdir / "tidal.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    df = pl.read_csv(DATA, infer_schema=False).sample(fraction=1.0, shuffle=True, seed=seed)
    n_hist = int(df.height * history_share)
    history, future = df.head(n_hist), df.slice(n_hist)
    history.write_csv(workdir / "history.csv")
    # a second batch from the CRM export with some broken rows
    broken = future.head(40).with_columns(
        pl.when(pl.int_range(pl.len()) % 4 == 0).then(pl.lit("n/a")).otherwise(pl.col("tenure")).alias("tenure"),
        pl.when(pl.int_range(pl.len()) % 4 == 1).then(pl.lit("Three year")).otherwise(pl.col("Contract")).alias("Contract"),
        pl.when(pl.int_range(pl.len()) % 4 == 2).then(pl.lit("-5")).otherwise(pl.col("MonthlyCharges")).alias("MonthlyCharges"))
    broken_path = workdir / "crm_export.csv"
    broken.write_csv(broken_path)
    return spec_path, future.slice(40), broken_path


def _records(frame: pl.DataFrame, features: list[str], shifted: bool) -> list[dict[str, Any]]:
    out = []
    for row in frame.iter_rows(named=True):
        rec: dict[str, Any] = {k: row[k] for k in features}
        rec["SeniorCitizen"] = row["SeniorCitizen"] == "1"
        rec["tenure"] = float(row["tenure"])
        rec["MonthlyCharges"] = float(row["MonthlyCharges"]) * (PRICE_RISE if shifted else 1.0)
        total = row["TotalCharges"].strip()
        rec["TotalCharges"] = float(total) * (PRICE_RISE if shifted else 1.0) if total else None
        rec["customerID"] = row["customerID"]
        out.append(rec)
    return out


def _wait_ready(client: httpx.Client, proc: subprocess.Popen, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            r = client.get("/readyz")
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready in time")


def run(workdir: str | Path, *, port: int | None = None, history_share: float = 0.6, normal_rows: int = 800,
        seed: int = 11, quiet: bool = False) -> dict[str, Any]:
    """Run the loop in ``workdir`` and return its figures."""
    from tidal.project import Project

    say = (lambda *a: None) if quiet else _say
    started = time.perf_counter()
    workdir = Path(workdir).resolve()
    spec_path, future, broken_path = _prepare(workdir, history_share, seed)
    figures: dict[str, Any] = {}

    project = Project.open(spec_path)
    say("spec", f"{project.spec.name}: {project.spec.task} on {project.spec.target!r}, "
        f"{len(project.spec.features)} features, workspace {project.ws.root}")

    for report in project.ingest() + project.ingest(broken_path):
        say("ingest", f"{Path(report.source).name}: {report.rows_accepted}/{report.rows_total} accepted, "
            f"{report.rows_quarantined} quarantined {dict(sorted(report.reasons.items())) or ''}")
        figures.setdefault("ingest", []).append(report.as_dict())
    again = project.ingest(broken_path)[0]
    say("ingest", f"re-ingesting {broken_path.name}: already ingested = {again.already_ingested}")

    first = project.train()
    m = first.metrics["test"]
    say("train", f"version {first.version} on {first.metrics['rows']['train']} rows "
        f"({first.metrics['best_iteration']} trees, {first.metrics['fit_seconds']:.2f} s)")
    ev = project.evaluate(first.version)["test"]
    say("evaluate", f"held-out {ev['rows']} rows: AUC {ev['auc']:.3f}, PR-AUC {ev['pr_auc']:.3f}, "
        f"log-loss {ev['log_loss']:.3f}")
    say("evaluate", f"cost per customer at the cost-optimal threshold {ev['threshold']:.2f}: "
        f"{ev['cost_per_row']:.2f}  vs at 0.5: {ev['cost_per_row_at_0_5']:.2f}")
    figures["evaluate"] = ev
    project.promote(first.version, reason="demo: first model")
    say("promote", f"version {first.version} is in production")

    port = port or _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "-m", "tidal.cli", "serve", "--spec", str(spec_path),
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(workdir / "server.log", "w"))
    base = f"http://127.0.0.1:{port}"
    failed = 0
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            ready = _wait_ready(client, server)
            say("serve", f"{base} ready with version {ready['model_version']}")
            features = list(project.spec.features)
            normal = _records(future.head(normal_rows), features, shifted=False)
            shifted = _records(future.slice(normal_rows), features, shifted=True)
            labels = future["Churn"].to_list()
            ids: list[str] = []
            latencies = []
            t0 = time.perf_counter()
            for i, rec in enumerate(normal + shifted):
                t = time.perf_counter()
                r = client.post("/v1/predict", json=rec)
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    failed += 1
                    continue
                ids.append(r.json()["predictions"][0]["prediction_id"])
            elapsed = time.perf_counter() - t0
            latencies.sort()
            p50, p99 = latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000
            say("traffic", f"{len(ids)} single-row requests ({len(shifted)} with prices +{PRICE_RISE - 1:.0%}) "
                f"in {elapsed:.1f} s: p50 {p50:.2f} ms, p99 {p99:.2f} ms (client-side, one connection), "
                f"{failed} failed")
            bad = client.post("/v1/predict", json={k: v for k, v in normal[0].items() if k != "tenure"})
            say("traffic", f"a record without 'tenure' gets {bad.status_code}: "
                f"{bad.json()['error']['problems'][0]['field']} - {bad.json()['error']['problems'][0]['problem']}")
            fb = [{"prediction_id": pid, "label": lab} for pid, lab in zip(ids, labels)]
            accepted = sum(client.post("/v1/feedback", json=fb[i:i + 500]).json()["accepted"]
                           for i in range(0, len(fb), 500))
            say("feedback", f"{accepted} labels sent")
            figures["traffic"] = {"requests": len(ids), "failed": failed, "p50_ms": p50, "p99_ms": p99}
            time.sleep(1.5)  # let the server flush its logs to the lake

            mon = project.monitor()
            drifted = ", ".join(mon.get("drifted_features", [])) or "none"
            perf = mon.get("performance", {})
            say("monitor", f"{mon['n_predictions']} predictions: drifted features: {drifted}; "
                f"score PSI {mon.get('score_psi', 0):.3f}")
            if perf.get("status") == "ok":
                say("monitor", f"realised on {perf['n_labels']} labels: AUC {perf['auc']:.3f}, cost per customer "
                    f"{perf['cost_per_row']:.2f} (training {perf['baseline_cost_per_row']:.2f})")
            for alert in mon["alerts"]:
                say("monitor", f"ALERT {alert['kind']}: {alert['message']}")
            figures["monitor"] = {"drifted": mon.get("drifted_features", []), "alerts": mon["alerts"],
                                  "score_psi": mon.get("score_psi"), "performance": perf}

            decision = project.retrain()
            for reason in decision.get("reasons", []):
                say("retrain", f"policy fired: {reason}")
            if decision.get("retrained"):
                say("retrain", f"champion v{decision['champion']} vs challenger v{decision['challenger']} on the "
                    f"{decision['holdout_rows']} newest labelled rows: cost per customer "
                    f"{decision['champion_holdout']['cost_per_row']:.2f} vs "
                    f"{decision['challenger_holdout']['cost_per_row']:.2f}")
            say("retrain", decision["message"])
            figures["retrain"] = decision

            production = project.registry.resolve("production")["version"]
            swap_deadline = time.monotonic() + 20
            served = None
            while time.monotonic() < swap_deadline:
                served = client.get("/readyz").json()["model_version"]
                r = client.post("/v1/predict", json=shifted[0])
                failed += r.status_code != 200
                if served == production:
                    break
                time.sleep(0.1)
            say("serve", f"server now answers with version {served} (production: {production}), no restart, "
                f"{failed} failed requests in all")
            figures["served_version"] = served
            figures["production_version"] = production
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    logged = project.ws.lake.read("predictions")
    figures["logged_predictions"] = 0 if logged is None else logged.num_rows
    figures["failed_requests"] = failed
    say("stop", f"server stopped (exit {server.returncode}); prediction log holds {figures['logged_predictions']} rows")
    figures["seconds"] = time.perf_counter() - started
    say("done", f"the whole loop took {figures['seconds']:.0f} s; workspace kept in {workdir}")
    project.close()
    return figures


def main() -> None:
    workdir = Path(os.environ.get("TIDAL_DEMO_DIR", HERE.parents[1] / "build" / "demo"))
    figures = run(workdir)
    (workdir / "figures.json").write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
