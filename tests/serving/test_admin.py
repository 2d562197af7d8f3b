"""The quarantine over HTTP and the CLI: token-protected, and the same decisions as the API."""

from __future__ import annotations

import subprocess
import sys

import httpx
import polars as pl
import pytest
import yaml

from tests.conftest import CHURN_SPEC, TELCO
from tests.serving.conftest import Server, free_port
from tidal.project import Project

TOKEN = "s3cret-admin"


@pytest.fixture
def held(tmp_path):
    """A project whose second batch is held: 20% of its rows have charges far out of range."""
    spec = dict(CHURN_SPEC, training={"num_boost_round": 30})
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    telco = pl.read_csv(TELCO, infer_schema=False)
    telco.head(3000).write_csv(tmp_path / "a.csv")
    flood = telco.slice(3000, 500).with_columns(
        pl.when(pl.int_range(pl.len()) < 100).then(pl.lit("900")).otherwise(pl.col("MonthlyCharges"))
        .alias("MonthlyCharges"))
    flood.write_csv(tmp_path / "b.csv")
    project = Project.open(tmp_path / "tidal.yaml")
    project.ingest(tmp_path / "a.csv")
    report = project.ingest(tmp_path / "b.csv")[0]
    assert report.status == "held"
    yield project, report.batch_id
    project.close()


def test_quarantine_over_http(held, monkeypatch):
    project, batch_id = held
    monkeypatch.setenv("TIDAL_ADMIN_TOKEN", TOKEN)
    server = Server(project.spec_path, free_port())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert httpx.get(server.url + "/v1/quarantine").status_code == 401
        r = httpx.get(server.url + "/v1/quarantine", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        listed = httpx.get(server.url + "/v1/quarantine", headers=auth).json()
        assert [q["batch_id"] for q in listed] == [batch_id] and listed[0]["rows"] == 500
        shown = httpx.get(f"{server.url}/v1/quarantine/{batch_id}?limit=3", headers=auth).json()
        assert len(shown["sample"]) == 3 and "outside the reference" in shown["sample"][0]["reasons"][0]
        r = httpx.post(f"{server.url}/v1/quarantine/{batch_id}/release", headers=auth, json={})
        assert r.status_code == 422 and r.json()["error"]["problems"][0]["field"].endswith("reason")
        r = httpx.post(f"{server.url}/v1/quarantine/{batch_id}/release", headers=auth,
                       json={"reason": "a price test, legitimate", "actor": "ops"})
        assert r.status_code == 200 and r.json()["released"] == 500
        r = httpx.post(f"{server.url}/v1/quarantine/{batch_id}/drop", headers=auth, json={"reason": "x"})
        assert r.status_code == 409
        assert httpx.get(server.url + "/v1/quarantine/nope", headers=auth).status_code == 404
    finally:
        server.stop()
    events = pl.from_arrow(project.ws.lake.read("events"))
    assert events.filter(pl.col("_batch_id") == batch_id).height == 500


def test_admin_routes_disabled_without_a_token(held, monkeypatch):
    project, _ = held
    monkeypatch.delenv("TIDAL_ADMIN_TOKEN", raising=False)
    server = Server(project.spec_path, free_port())
    try:
        r = httpx.get(server.url + "/v1/quarantine", headers={"Authorization": "Bearer x"})
        assert r.status_code == 503 and "TIDAL_ADMIN_TOKEN" in r.json()["error"]["fix"]
    finally:
        server.stop()


def test_quarantine_cli(held):
    project, batch_id = held

    def run(*args):
        return subprocess.run([sys.executable, "-m", "tidal.cli", *args, "--spec", str(project.spec_path)],
                              capture_output=True, text=True, timeout=120)

    r = run("quarantine", "list", "--json")
    assert r.returncode == 0 and batch_id in r.stdout
    r = run("quarantine", "drop", batch_id)
    assert r.returncode != 0 and "reason" in r.stderr  # a decision needs a reason
    r = run("quarantine", "drop", batch_id, "--reason", "poisoned")
    assert r.returncode == 0 and "dropped 500 rows" in r.stdout
    r = run("quarantine", "release", batch_id, "--reason", "changed my mind")
    assert r.returncode == 1 and "already dropped" in r.stderr and "Traceback" not in r.stderr
