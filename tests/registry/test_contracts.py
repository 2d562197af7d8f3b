"""API contracts: a model update that adds an optional feature keeps old clients working;
a breaking one is refused at promotion and explained by `tidal contract check`."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import CHURN_SPEC, TELCO
from tests.serving.conftest import Server, free_port, telco_records
from tidal.errors import StateError
from tidal.project import Project
from tidal.registry.contracts import breaks, contract_from_signature


def _signature(inputs, task="binary"):
    return {"task": task, "target": "Churn", "positive_class": "Yes",
            "inputs": {n: {"type": t, "nullable": nl} for n, (t, nl) in inputs.items()}}


def test_contract_rules():
    contract = contract_from_signature(_signature({"a": ("numeric", False), "b": ("boolean", True)}))
    assert breaks(contract, _signature({"a": ("numeric", False), "b": ("boolean", True)})) == []
    # widening is fine, a new optional input is fine, dropping an input is fine
    assert breaks(contract, _signature({"a": ("categorical", True), "b": ("numeric", True), "c": ("numeric", True)})) == []
    found = {p.location: p.message for p in breaks(contract, _signature({
        "a": ("boolean", False), "b": ("boolean", False), "c": ("numeric", False)}, task="regression"))}
    assert "narrows from numeric to boolean" in found["inputs.a"]
    assert "model requires it" in found["inputs.b"]
    assert "new input is required" in found["inputs.c"]
    assert "task" in found


def _spec(path, **extra_features):
    spec = dict(CHURN_SPEC, training={"num_boost_round": 30})
    spec["features"] = dict(CHURN_SPEC["features"], **extra_features)
    path.write_text(yaml.safe_dump(spec))
    return path


def test_old_clients_are_served_after_a_model_update_that_added_a_feature(tmp_path):
    import polars as pl

    telco = pl.read_csv(TELCO, infer_schema=False)
    telco.head(4000).write_csv(tmp_path / "old.csv")
    telco.slice(4000).write_csv(tmp_path / "new.csv")
    spec_path = _spec(tmp_path / "tidal.yaml")
    project = Project.open(spec_path)
    project.ingest(tmp_path / "old.csv")
    project.promote(project.train().version)
    project.close()
    # the spec gains optional features, the new data has them, and version 2 uses them
    _spec(spec_path, PhoneService={"type": "categorical"}, StreamingTV={"type": "categorical"})
    project = Project.open(spec_path)
    project.ingest(tmp_path / "new.csv")
    v2 = project.train().version
    assert "PhoneService" in project.registry.load(v2)[1].signature["inputs"]
    project.promote(v2)  # keeps the contract: the new inputs are optional
    server = Server(spec_path, free_port())
    try:
        old_client = telco_records(3)  # built for version 1: no PhoneService, no StreamingTV
        assert "PhoneService" not in old_client[0]
        r = httpx.post(server.url + "/v1/predict", json=old_client)
        assert r.status_code == 200 and r.json()["model_version"] == v2
        assert len(r.json()["predictions"]) == 3
    finally:
        server.stop()
        project.close()


def test_breaking_model_is_refused_and_explained(tmp_path):
    spec_path = _spec(tmp_path / "tidal.yaml")
    with Project.open(spec_path) as project:
        project.ingest(TELCO)
        project.promote(project.train().version)
    _spec(spec_path, PhoneService={"type": "categorical", "nullable": False})
    with Project.open(spec_path) as project:
        v2 = project.train().version
        with pytest.raises(StateError, match="breaks the /v1 contract") as err:
            project.promote(v2, force=True)  # not even --force: a break needs a new API version
        assert err.value.problems[0].location == "inputs.PhoneService"
        assert project.registry.resolve("production")["version"] == 1
    r = subprocess.run([sys.executable, "-m", "tidal.cli", "contract", "check", str(v2), "--spec", str(spec_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "inputs.PhoneService" in r.stderr and "nullable" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tidal.cli", "contract", "check", "1", "--spec", str(spec_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "keeps the /v1 contract" in r.stdout


def test_a_breaking_model_is_published_as_a_new_api_version_and_old_clients_stay_on_the_old_one(tmp_path):
    import time

    from tidal.errors import NotFound

    spec_path = _spec(tmp_path / "tidal.yaml")
    with Project.open(spec_path) as project:
        project.ingest(TELCO)
        project.promote(project.train().version)
    old_client = telco_records(3)  # no PhoneService
    new_client = [dict(r, PhoneService="Yes") for r in old_client]
    server = Server(spec_path, free_port())  # started before the new API version exists, on the old spec
    try:
        assert httpx.post(server.url + "/v1/predict", json=old_client).json()["model_version"] == 1
        _spec(spec_path, PhoneService={"type": "categorical", "nullable": False})  # a new required input
        with Project.open(spec_path) as project:
            v2 = project.train().version
            with pytest.raises(StateError, match="promote it with --new-api"):
                project.promote(v2, force=True)
            with pytest.raises(StateError, match="published by a promotion to production"):
                project.promote(v2, stage="canary", new_api=True)
            project.promote(v2, new_api=True, force=True)
            assert project.registry.resolve("production")["version"] == v2
            assert [c["api"] for c in project_contracts(project)] == ["v1", "v2"]
            v1_contract, v2_contract = project_contracts(project)
            assert v1_contract["served_by"] == 1 and v2_contract["inputs"]["PhoneService"]["required"]
            assert "publishes /v2; version 1 goes on answering /v1" in project.registry.history()[-1]["reason"]
            with pytest.raises(StateError, match="answers the /v1 API's clients"):
                project.reject(1, reason="old")
            v3 = project.train().version
            with pytest.raises(StateError, match="keeps the /v2 contract: a new API version is for a breaking"):
                project.promote(v3, new_api=True, force=True)
        # the running server moves /v1 to its pinned version at its next reload: old clients never notice
        deadline = time.monotonic() + 15
        while httpx.post(server.url + "/v1/predict", json=old_client).json()["model_version"] != 1 \
                or time.monotonic() < deadline - 14:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        server.stop()
    server = Server(spec_path, free_port())  # on the new spec: /v2 validates the new input
    try:
        r1 = httpx.post(server.url + "/v1/predict", json=old_client)
        assert r1.status_code == 200 and r1.json()["model_version"] == 1 and len(r1.json()["predictions"]) == 3
        big = httpx.post(server.url + "/v1/predict", json=telco_records(40))  # the column-wise path too
        assert big.status_code == 200 and big.json()["model_version"] == 1
        r2 = httpx.post(server.url + "/v2/predict", json=new_client)
        assert r2.status_code == 200 and r2.json()["model_version"] == v2
        refused = httpx.post(server.url + "/v2/predict", json=old_client)
        assert refused.status_code == 422 and "PhoneService" in refused.text
        assert httpx.post(server.url + "/v3/predict", json=new_client).status_code == 404
        doc = httpx.get(server.url + "/openapi.json").json()
        assert {"/v1/predict", "/v2/predict"} <= set(doc["paths"])  # each API version with its own record schema
        v1_ref = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
        v1_schema = doc["components"]["schemas"][v1_ref["$ref"].rsplit("/", 1)[1]]
        v2_ref = doc["paths"]["/v2/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
        v2_schema = doc["components"]["schemas"][v2_ref["$ref"].rsplit("/", 1)[1]]
        assert "PhoneService" not in v1_schema["properties"] and "PhoneService" in v2_schema["required"]
        cli = [sys.executable, "-m", "tidal.cli", "contract"]
        listed = subprocess.run([*cli, "list", "--spec", str(spec_path)], capture_output=True, text=True, timeout=60)
        assert "/v1" in listed.stdout and "answered by model version 1" in listed.stdout
        assert "/v2" in listed.stdout and "answered by the production version" in listed.stdout
        shown = subprocess.run([*cli, "show", "--api", "v1", "--spec", str(spec_path)], capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0 and '"served_by": 1' in shown.stdout and "PhoneService" not in shown.stdout
        missing = subprocess.run([*cli, "show", "--api", "v7", "--spec", str(spec_path)], capture_output=True,
                                 text=True, timeout=60)
        assert missing.returncode == 1 and "no /v7 API version" in missing.stderr
        newest = subprocess.run([*cli, "retire", "v2", "--reason", "x", "--spec", str(spec_path)],
                                capture_output=True, text=True, timeout=60)
        assert newest.returncode == 1 and "only an older one can be retired" in newest.stderr
        done = subprocess.run([*cli, "retire", "v1", "--reason", "clients moved to v2", "--spec", str(spec_path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 15
        while (gone := httpx.post(server.url + "/v1/predict", json=old_client)).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert gone.status_code == 410
        error = gone.json()["error"]
        assert error["code"] == "api_retired" and "clients moved to v2" in error["message"]
        assert "/v2/predict" in error["fix"]
    finally:
        server.stop()
    with Project.open(spec_path) as project:
        project.reject(1, reason="retired with /v1")  # no longer answering anybody
        with pytest.raises(NotFound):
            from tidal.registry.contracts import retire
            retire(project.ws, "v9", actor="me", reason="x")
        project.ws.lake  # the log holds both versions' answers
        logged = project.ws.lake.read("predictions").column("_version").to_pylist()
    assert {1, v2} <= set(logged)


def project_contracts(project):
    from tidal.registry.contracts import all_contracts

    return all_contracts(project.ws)
