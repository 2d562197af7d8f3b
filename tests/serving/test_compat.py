"""OIP v2 with the real tritonclient, and MLflow's /invocations formats, against a real server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.serving.conftest import telco_records


@pytest.fixture(scope="module")
def baseline(served):
    """What /v1/predict answers for 6 Telco records: the reference for every other protocol."""
    _, server = served
    recs = telco_records(6, offset=200)
    preds = httpx.post(server.url + "/v1/predict", json=recs).json()["predictions"]
    return recs, np.array([p["probability"] for p in preds]), [p["decision"] for p in preds]


def _triton_inputs(recs, project, binary):
    inputs = []
    for name, feat in project.spec.features.items():
        values = [r.get(name) for r in recs]
        if feat.type == "numeric":
            arr, dtype = np.array([np.nan if v is None else v for v in values], dtype=np.float64), "FP64"
        elif feat.type == "boolean":
            arr, dtype = np.array(values, dtype=bool), "BOOL"
        else:
            arr, dtype = np.array(values, dtype=np.object_), "BYTES"
        tensor = triton.InferInput(name, [len(recs)], dtype)
        tensor.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [False, True])
def test_oip_v2_with_tritonclient(served, baseline, binary):
    project, server = served
    recs, probs, decisions = baseline
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("churn")
    meta = client.get_model_metadata("churn")
    assert {i["name"] for i in meta["inputs"]} == set(project.spec.features)
    assert {o["name"] for o in meta["outputs"]} >= {"probability", "decision"}
    result = client.infer("churn", _triton_inputs(recs, project, binary),
                          outputs=[triton.InferRequestedOutput("probability", binary_data=False),
                                   triton.InferRequestedOutput("decision", binary_data=False)])
    np.testing.assert_allclose(result.as_numpy("probability"), probs, rtol=0, atol=1e-12)
    assert [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("decision")] == decisions


def test_oip_errors(served):
    _, server = served
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    with pytest.raises(triton.InferenceServerException):
        client.get_model_metadata("no-such-model")
    r = httpx.post(server.url + "/v2/models/churn/infer", json={"inputs": [
        {"name": "tenure", "shape": [1], "datatype": "BYTES", "data": ["many"]}]})
    assert r.status_code == 422
    fields = [p["field"] for p in r.json()["error"]["problems"]]
    assert set(fields) == {"inputs.0.tenure", "inputs.0.MonthlyCharges"}  # wrong type, missing
    r = httpx.post(server.url + "/v2/models/churn/infer", json={"inputs": [
        {"name": "tenure", "shape": [2], "datatype": "FP64", "data": [1, 2]},
        {"name": "MonthlyCharges", "shape": [1], "datatype": "FP64", "data": [1]}]})
    assert r.status_code == 422 and "different lengths" in r.json()["error"]["message"]


def _mlflow_bodies(recs, project):
    names = list(project.spec.features)
    return {
        "dataframe_split": {"dataframe_split": {"columns": names, "data": [[r.get(n) for n in names] for r in recs]}},
        "dataframe_records": {"dataframe_records": recs},
        "instances": {"instances": recs},
        "inputs": {"inputs": {n: [r.get(n) for r in recs] for n in names}},
    }


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_mlflow_invocations_formats(served, baseline, fmt):
    project, server = served
    recs, probs, decisions = baseline
    r = httpx.post(server.url + "/invocations", json=_mlflow_bodies(recs, project)[fmt])
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    np.testing.assert_allclose([p["probability"] for p in preds], probs, atol=1e-12)
    assert [p["decision"] for p in preds] == decisions


def test_mlflow_invocations_errors(served):
    _, server = served
    r = httpx.post(server.url + "/invocations", json={"records": []})
    assert r.status_code == 422 and "exactly one of" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/invocations", json={"dataframe_records": [{"tenure": "x"}]})
    assert r.status_code == 422 and "rows.0.tenure" in [p["field"] for p in r.json()["error"]["problems"]]
