"""Canary (sticky share), shadow (logged, never returned) and the watchdog's automatic
rollback under load, against a real server on a socket."""

from __future__ import annotations

import threading
import time

import httpx
import polars as pl
import pytest

from tests.serving.conftest import Server, free_port, make_project, telco_records
from tidal.serving.routing import Deployment, LiveStats, breach


def _records_with_ids(n, offset=0):
    recs = telco_records(n, offset=offset)
    ids = pl.read_csv(__import__("tests.conftest", fromlist=["TELCO"]).TELCO, infer_schema=False)["customerID"]
    for i, r in enumerate(recs):
        r["customerID"] = ids[offset + i]
    return recs


def test_route_is_sticky_and_shares_traffic():
    class P:  # the routing only reads .version
        def __init__(self, v):
            self.version = v
    d = Deployment(production=P(1), canary=P(2), canary_share=0.25)
    picks = [d.route(f"cust-{i}").version for i in range(4000)]
    assert 0.2 < picks.count(2) / len(picks) < 0.3
    assert all(d.route(f"cust-{i}").version == picks[i] for i in range(200))  # same key, same version
    assert Deployment(production=P(1)).route("x").version == 1


def test_breach_rules():
    stats = LiveStats(window=100)
    for _ in range(40):
        stats.record(3, 0.001, True)
    assert breach(stats.summary(3), max_error_rate=0.01, p99_ms=50, min_requests=50) is None  # too few yet
    for _ in range(10):
        stats.record(3, 0.001, False)
    assert "error rate 20.00%" in breach(stats.summary(3), max_error_rate=0.01, p99_ms=50, min_requests=50)
    assert "p99" in breach({"requests": 60, "error_rate": 0, "p99_ms": 9.0}, max_error_rate=0.1, p99_ms=5,
                           min_requests=50)


def test_canary_answers_a_sticky_share_and_shadow_is_only_logged(tmp_path):
    project = make_project(tmp_path / "p", versions=3, serving={"canary_share": 0.3, "flush_interval_s": 0.2,
                                                                "reload_interval_s": 0.2})
    project.promote(2, stage="canary", force=True)
    project.promote(3, stage="shadow")
    server = Server(project.spec_path, free_port())
    try:
        recs = _records_with_ids(300)
        with httpx.Client(base_url=server.url) as c:
            deadline = time.monotonic() + 10
            while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            first = [c.post("/v1/predict", json=r).json() for r in recs]
            again = [c.post("/v1/predict", json=r).json()["model_version"] for r in recs[:50]]
        versions = [f["model_version"] for f in first]
        assert set(versions) == {1, 2}  # the shadow never answers
        assert 0.2 < versions.count(2) / len(versions) < 0.4
        assert again == versions[:50]  # sticky per customer
        ids = {p["prediction_id"] for f in first for p in f["predictions"]}
    finally:
        server.stop()
    log = pl.from_arrow(project.ws.lake.read("predictions"))
    shadow = log.filter(pl.col("_shadow"))
    assert set(shadow["_version"].unique()) == {3}
    assert ids <= set(shadow["_id"].to_list())  # every answered request was shadow-scored too
    answered = log.filter(~pl.col("_shadow"))
    assert set(answered["_version"].unique()) == {1, 2}
    project.close()


def _hammer(url, recs, stop, failures, versions):
    with httpx.Client(base_url=url, timeout=10) as c:
        i = 0
        while not stop.is_set():
            r = c.post("/v1/predict", json=recs[i % len(recs)])
            i += 1
            if r.status_code != 200:
                failures.append(r.status_code)
            else:
                versions.append(r.json()["model_version"])


@pytest.mark.parametrize("stage", ["production", "canary"])
def test_watchdog_rolls_back_a_breaching_version_under_load_without_a_failed_request(tmp_path, stage):
    # a p99 budget no model meets: only a version that arrives while serving is judged and withdrawn
    project = make_project(tmp_path / "p", versions=2, force=True,
                           guardrails={"p99_latency_ms": 0.000001, "min_live_requests": 60},
                           serving={"canary_share": 0.5, "flush_interval_s": 0.2, "reload_interval_s": 0.2})
    server = Server(project.spec_path, free_port())
    stop, failures, versions = threading.Event(), [], []
    threads = [threading.Thread(target=_hammer, args=(server.url, _records_with_ids(40), stop, failures, versions))
               for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        project.promote(2, stage=stage, force=True, reason="test")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rolled = [e for e in project.registry.history() if e["actor"] == "tidal-watchdog"]
            if rolled:
                break
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    tail = versions[-20:]
    assert rolled, f"the watchdog did not act; answered by {sorted(set(versions))}, {len(versions)} requests"
    assert "auto-rollback" in rolled[-1]["reason"] and "p99" in rolled[-1]["reason"]
    assert failures == []
    assert 2 in versions and tail[-1] == 1, tail  # version 2 answered, then version 1 again
    assert project.registry.resolve("production")["version"] == 1
    assert project.registry.resolve(2)["stage"] == ("archived" if stage == "production" else "candidate")
    project.close()
