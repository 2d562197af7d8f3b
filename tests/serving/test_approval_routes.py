"""Approval over HTTP (token-protected POST /v1/admin/models/{version}/approve|reject) and the lineage
(read-only GET /v1/models/{version}), against a real server on a socket."""

from __future__ import annotations

import httpx
import pytest

from tests.serving.conftest import Server, free_port, make_project
from tidal.errors import ApprovalRequired

TOKEN = "s3cret-admin"


@pytest.fixture
def gated(tmp_path, monkeypatch):
    """A served project asking for approval before production: version 1 approved and in production,
    version 2 a candidate."""
    monkeypatch.setenv("TIDAL_ADMIN_TOKEN", TOKEN)
    project = make_project(tmp_path / "p", versions=2, promote=False,
                           registry={"approval_required_for": ["production"]})
    project.approve(1, reason="first release", actor="ana")
    project.promote(1, actor="ana", reason="go live")
    server = Server(project.spec_path, free_port())
    yield project, server
    server.stop()
    project.close()


def test_approval_and_lineage_over_http(gated):
    project, server = gated
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = server.url + "/v1/admin/models/2/approve"
    r = httpx.post(url, json={"reason": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.post(url, headers=auth, json={})
    assert r.status_code == 422 and r.json()["error"]["problems"][0]["field"].endswith("reason")
    with pytest.raises(ApprovalRequired):  # nothing approved 2 yet
        project.promote(2, force=True)

    r = httpx.post(url, headers=auth, json={"reason": "reviewed the report", "actor": "ops"})
    assert r.status_code == 200
    body = r.json()
    assert body["version"] == 2 and body["status"] == "approved" and body["by"] == "ops"
    assert body["required_for"] == ["production"]
    assert project.registry.approval(2)["status"] == "approved"  # the same record as the API's
    assert project.promote(2, force=True, reason="release 2")["stage"] == "production"

    r = httpx.post(server.url + "/v1/admin/models/2/reject", headers=auth, json={"reason": "too late"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert "tidal rollback" in r.json()["error"]["fix"]
    r = httpx.post(server.url + "/v1/admin/models/1/reject", headers=auth, json={"reason": "biased"})
    assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["by"] == "http"
    r = httpx.post(server.url + "/v1/admin/models/42/approve", headers=auth, json={"reason": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"

    # lineage: read-only, no token
    r = httpx.get(server.url + "/v1/models/2")
    assert r.status_code == 200
    lin = r.json()
    run = project.run(lin["run_id"])
    assert lin["version"] == 2 and lin["stage"] == "production" and lin["run_id"] == project.models()[1]["run_id"]
    assert lin["data_versions"] == run["data_versions"] == {"events": 0}
    assert lin["spec_sha256"] == project.spec.digest() and lin["code_version"] == run["code_version"]
    assert lin["training_rows"]["total"] == run["metrics"]["data_rows"]
    assert lin["bundle"]["manifest_sha256"] == project.registry.resolve(2)["manifest_sha256"]
    assert lin["champion"]["version"] == 1
    assert lin["approval"]["status"] == "approved" and lin["approval"]["decisions"][0]["actor"] == "ops"
    promoted = [e for e in project.registry.history() if e["version"] == 2][-1]
    assert [(e["event"], e["actor"], e["reason"]) for e in lin["history"]][1:] == [
        ("approved", "ops", "reviewed the report"), ("stage", promoted["actor"], promoted["reason"])]
    assert lin["history"][-1]["to_stage"] == "production" and "release 2" in lin["history"][-1]["reason"]
    assert httpx.get(server.url + "/v1/models/latest").json()["version"] == 2
    assert httpx.get(server.url + "/v1/models/1").json()["approval"]["status"] == "rejected"
    r = httpx.get(server.url + "/v1/models/9")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "/v1/models/{version}" in httpx.get(server.url + "/openapi.json").json()["paths"]
