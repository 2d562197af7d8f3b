"""Promotion, rollback and the watchdog's automatic rollback under load from a real load
generator (wrk, 8 connections) against a real server: not one request fails."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import polars as pl
import pytest

from tests.conftest import REQUIRE
from tests.serving.conftest import Server, free_port, make_project, telco_records

SECONDS = 6


def _wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        if REQUIRE:
            pytest.fail("wrk is required (TIDAL_REQUIRE_SERVICES=1) but not installed: apt-get install wrk")
        pytest.skip("wrk is not installed (apt-get install wrk)")
    return path


def _start_wrk(wrk: str, url: str, tmp_path) -> subprocess.Popen:
    body = tmp_path / "record.json"
    body.write_text(json.dumps(telco_records(1)[0]))
    script = tmp_path / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    return subprocess.Popen([wrk, "-t2", "-c8", f"-d{SECONDS}s", "--timeout", "5s", "-s", str(script),
                             url + "/v1/predict"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _failures(out: str) -> tuple[int, int]:
    """(requests, failed requests: non-2xx answers and socket errors) from wrk's report."""
    done = re.search(r"(\d+) requests in", out)
    assert done, out
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return int(done.group(1)), (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)


def _answered_by(project) -> list[int]:
    log = pl.from_arrow(project.ws.lake.read("predictions")).sort("_ts", maintain_order=True)
    return log["_version"].to_list()


def test_promotion_and_rollback_under_wrk_fail_no_request(tmp_path):
    wrk = _wrk()
    project = make_project(tmp_path / "p", versions=2, serving={"flush_interval_s": 0.2, "reload_interval_s": 0.2})
    server = Server(project.spec_path, free_port())
    try:
        load = _start_wrk(wrk, server.url, tmp_path)
        time.sleep(1.5)
        project.promote(2, force=True, reason="swap under load")
        time.sleep(2)
        project.rollback(reason="back under load")
        out, _ = load.communicate(timeout=SECONDS + 30)
    finally:
        server.stop()
    requests, failed = _failures(out)
    assert failed == 0, out
    assert requests > 500, out
    versions = _answered_by(project)
    assert len(versions) >= requests  # every answer logged
    swapped = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    assert swapped == [1, 2, 1], swapped  # version 1, then 2, then 1 again: each swap one clean cut
    project.close()


def test_the_watchdogs_rollback_under_wrk_fails_no_request(tmp_path):
    wrk = _wrk()
    # a p99 budget no model meets: only a version that arrives while serving is judged and rolled back
    project = make_project(tmp_path / "p", versions=2, force=True,
                           guardrails={"p99_latency_ms": 0.000001, "min_live_requests": 200},
                           serving={"flush_interval_s": 0.2, "reload_interval_s": 0.2})
    server = Server(project.spec_path, free_port())
    try:
        load = _start_wrk(wrk, server.url, tmp_path)
        time.sleep(1.5)
        project.promote(2, force=True, reason="a version the watchdog will take back")
        out, _ = load.communicate(timeout=SECONDS + 30)
    finally:
        server.stop()
    requests, failed = _failures(out)
    assert failed == 0, out
    rolled = [e for e in project.registry.history() if e["actor"] == "tidal-watchdog"]
    assert rolled and "p99" in rolled[-1]["reason"], project.registry.history()[-3:]
    assert project.registry.resolve("production")["version"] == 1
    versions = _answered_by(project)
    assert 2 in versions and versions[-1] == 1
    project.close()
