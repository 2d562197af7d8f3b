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
