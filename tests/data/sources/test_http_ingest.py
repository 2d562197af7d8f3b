"""POST /v1/ingest on a real server in a subprocess: token, size limit, JSON and CSV bodies, idempotency."""

from __future__ import annotations

import asyncio
import os
import uuid

import httpx
import pytest
import yaml

from tests.conftest import CHURN_SPEC, TELCO
from tests.serving.conftest import Server, free_port, telco_records
from tidal.project import Project

TOKEN_ENV = "TIDAL_TEST_INGEST_TOKEN"
TOKEN = "s3cret-" + uuid.uuid4().hex
MAX_BYTES = 20_000
LINES = TELCO.read_text().splitlines(keepends=True)
COLUMNS = LINES[0].strip().split(",")


def records(n: int, offset: int = 0) -> list[dict]:
    return telco_records(n, offset, extra=("customerID", "Churn"))


def write_project(root, **http) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    spec = {**CHURN_SPEC, "sources": [{"kind": "http", "name": "push", "token_env": TOKEN_ENV,
                                       "max_bytes": MAX_BYTES, **http}]}
    (root / "tidal.yaml").write_text(yaml.safe_dump(spec))
    return Project.open(root / "tidal.yaml")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(project, server): no model is needed to receive batches."""
    project = write_project(tmp_path_factory.mktemp("push"))
    os.environ[TOKEN_ENV] = TOKEN  # the child process inherits it at start
    try:
        srv = Server(project.spec_path, free_port())
    finally:
        del os.environ[TOKEN_ENV]
    yield project, srv
    srv.stop()
    project.close()


def post(srv: Server, content: bytes | str, *, token: str | None = TOKEN, **headers) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(srv.url + "/v1/ingest", content=content, headers=headers, timeout=30)


def customer_ids(project: Project) -> list[str]:
    table = project.ws.lake.read("events", columns=["customerID"])
    return [] if table is None else table.column("customerID").to_pylist()


def test_a_missing_or_wrong_token_is_refused(server):
    project, srv = server
    body = httpx.Request("POST", "/", json=records(2)).content
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        r = post(srv, body, token=token)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert TOKEN_ENV in r.json()["error"]["fix"]
    for header in (f"Basic {TOKEN}", "Bearer", TOKEN):
        r = post(srv, body, token=None, Authorization=header)
        assert r.status_code == 401, header
    assert customer_ids(project) == []


def test_a_body_over_max_bytes_is_refused(server):
    _, srv = server
    big = httpx.Request("POST", "/", json=records(200)).content
    assert len(big) > MAX_BYTES
    r = post(srv, big)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the real length is counted
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]

    r = httpx.post(srv.url + "/v1/ingest", content=chunks(), timeout=30,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 413, r.text


def test_a_json_array_is_ingested_once_per_idempotency_key(server):
    project, srv = server
    body = httpx.Request("POST", "/", json=records(20)).content
    key = uuid.uuid4().hex
    r = post(srv, body, **{"Idempotency-Key": key})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["rows_total"], report["rows_accepted"], report["rows_quarantined"]) == (20, 20, 0)
    assert report["source"] == "push" and report["already_ingested"] is False
    again = post(srv, body, **{"Idempotency-Key": key}).json()
    assert again["already_ingested"] is True and again["batch_id"] == report["batch_id"]
    # without a key, the body names the batch
    other = httpx.Request("POST", "/", json=records(5, offset=20)).content
    first, second = post(srv, other).json(), post(srv, other).json()
    assert (first["already_ingested"], second["already_ingested"]) == (False, True)
    ids = [i for i in customer_ids(project) if i in {r["customerID"] for r in records(25)}]
    assert len(ids) == len(set(ids)) == 25


def test_csv_text_is_ingested_and_bad_rows_are_quarantined(server):
    project, srv = server
    lines = LINES[0] + "".join(LINES[101:111])
    bad = LINES[111].split(",")
    bad[COLUMNS.index("tenure")] = "-5"
    r = post(srv, lines + ",".join(bad), **{"Content-Type": "text/csv; charset=utf-8"})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["rows_accepted"], report["rows_quarantined"], report["reasons"]) == (10, 1, {"tenure": 1})
    assert "customerID" not in report["dropped_columns"] and "Dependents" in report["dropped_columns"]


def test_a_rejected_batch_and_malformed_bodies_are_422(server):
    _, srv = server
    rows = records(3, offset=200)
    for rec in rows:
        del rec["Churn"]
    r = post(srv, httpx.Request("POST", "/", json=rows).content)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_data" and error["problems"][0]["field"] == "Churn"
    for body in (b"", b"{not json", b'{"a": 1}', b"[]", b"[1, 2]"):
        r = post(srv, body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
    r = post(srv, "a,b\n1,2\n", **{"Content-Type": "text/csv"})  # CSV without the required columns
    assert r.status_code == 422


def test_openapi_publishes_the_route(server):
    _, srv = server
    spec = httpx.get(srv.url + "/openapi.json", timeout=10).json()
    content = spec["paths"]["/v1/ingest"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "text/csv"}


def call_app(app, **request) -> httpx.Response:
    """One request to the app in this process (no lifespan, no socket)."""
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tidal") as client:
            return await client.post("/v1/ingest", **request)

    return asyncio.run(go())


def test_without_the_token_variable_the_route_says_how_to_set_it(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with write_project(tmp_path / "p") as project:
        r = call_app(project.app(), content=b"[]", headers={"Authorization": "Bearer x"})
        assert r.status_code == 503
        assert TOKEN_ENV in r.json()["error"]["message"] and TOKEN_ENV in r.json()["error"]["fix"]


def test_without_an_http_source_there_is_no_route(tmp_path):
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(CHURN_SPEC))
    with Project.open(tmp_path / "tidal.yaml") as project:
        assert call_app(project.app(), content=b"[]").status_code == 404

