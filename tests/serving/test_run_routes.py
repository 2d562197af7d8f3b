"""GET /v1/runs and GET /v1/runs/{run_id} over a real socket: read-only, no token, the usual 404 body."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.serving.conftest import Server, free_port, make_project


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(project, server) with one trained version in production."""
    root = tmp_path_factory.mktemp("runs-http")
    project = make_project(root)
    server = Server(project.spec_path, free_port())
    yield project, server
    server.stop()
    project.close()
    shutil.rmtree(root, ignore_errors=True)


def test_runs_over_http(served):
    project, server = served
    r = httpx.get(server.url + "/v1/runs")
    assert r.status_code == 200
    runs = r.json()
    assert [x["run_id"] for x in runs] == [x["run_id"] for x in project.runs()]
    first = runs[0]
    assert first["status"] == "finished" and first["duration_s"] > 0
    assert first["data_versions"] == {"events": 0}
    assert first["params"]["training"]["num_boost_round"] == 40
    assert first["metrics"]["test"]["auc"] > 0.8 and first["code_version"]

    shown = httpx.get(server.url + f"/v1/runs/{first['run_id']}").json()
    assert shown["run_id"] == first["run_id"] and shown["model_version"] == 1
    assert {f["file"] for f in shown["artifacts"]} >= {"model.txt", "manifest.json"}
    assert shown["started_at"] < shown["ended_at"]


def test_unknown_run_is_a_404_in_the_one_error_shape(served):
    _, server = served
    r = httpx.get(server.url + "/v1/runs/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found" and "run nope does not exist" in r.json()["error"]["message"]
    assert httpx.post(server.url + "/v1/runs").status_code == 405  # read-only
