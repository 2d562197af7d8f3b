"""Derived features end to end on Telco churn: trained through the Project API, served by a real
server on a socket exactly as batch scoring scores the same rows, free of skew, and exported
to ONNX (built-in kinds) or refused (a registered Python transform)."""

from __future__ import annotations

import os
import shutil
import sys
import time

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.serving.conftest import Server, free_port, make_project, telco_records
from tidal.errors import StateError
from tidal.features import derived as D
from tidal.features.pipeline import FeaturePipeline

PLUGIN = "tidal_churn_test_plugin"
PLUGIN_SOURCE = '''
import numpy as np
from tidal.features import register_transform


@register_transform("charge_per_month")
def charge_per_month(total, tenure, *, floor):
    """Total charges per month of tenure (at least ``floor`` months)."""
    return total / np.maximum(tenure, floor)
'''

BUILT_IN = {
    "charge_ratio": {"kind": "ratio", "numerator": "TotalCharges", "denominator": "MonthlyCharges"},
    "log_total": {"kind": "log", "column": "TotalCharges"},
    "tenure_bucket": {"kind": "bucketize", "column": "tenure", "bounds": [6, 12, 24, 48]},
    "monthly_clipped": {"kind": "clip", "column": "MonthlyCharges", "min": 20, "max": 100},
    "payment_te": {"kind": "target_encoding", "column": "PaymentMethod"},
}
WITH_PYTHON = {**BUILT_IN, "per_month": {"kind": "python", "function": "charge_per_month",
                                         "inputs": ["TotalCharges", "tenure"], "params": {"floor": 1}}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(project, server): churn with every derived kind (a plugin's Python transform too), version 1 serving."""
    root = tmp_path_factory.mktemp("derived")
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(plugins))  # this process trains and scores; the server gets PYTHONPATH
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])))
        project = make_project(root / "project", derived=WITH_PYTHON, plugins=[PLUGIN])
        server = Server(project.spec_path, free_port())
        yield project, server
        server.stop()
        project.close()
    sys.modules.pop(PLUGIN, None)
    D._REGISTRY.pop("charge_per_month", None)
    shutil.rmtree(root, ignore_errors=True)


def _requests() -> list[dict]:
    """Telco rows plus the edges: missing totals, tenure 0 and at a bucket bound, unseen and missing payment."""
    recs = telco_records(40, offset=2000)
    recs[0]["TotalCharges"] = None
    recs[1]["tenure"] = 0.0
    recs[2]["tenure"] = 12.0
    recs[3]["PaymentMethod"] = "Carrier pigeon"
    recs[4]["PaymentMethod"] = None
    recs[5]["MonthlyCharges"] = 150.0
    return recs


def test_training_uses_every_derived_feature(served):
    project, _ = served
    _, bundle = project.registry.load(1)
    assert bundle.pipeline.output_names[-len(WITH_PYTHON):] == sorted(WITH_PYTHON)  # the spec file sorts its keys
    assert bundle.signature["features"] == bundle.pipeline.output_names
    assert set(WITH_PYTHON).isdisjoint(bundle.signature["inputs"])  # requests carry raw columns only
    used = dict(zip(bundle.booster.feature_name(), bundle.booster.feature_importance("gain")))
    assert used["payment_te"] > 0 and used["charge_ratio"] > 0
    te = bundle.pipeline.derived["payment_te"]
    assert len(te.categories) == 4 and 0.1 < te.prior < 0.4  # Telco: four payment methods, ~26% churn


def test_the_server_answers_as_batch_scoring_does(served, tmp_path):
    project, server = served
    recs = _requests()
    r = httpx.post(server.url + "/v1/predict", json=recs, timeout=30)
    assert r.status_code == 200, r.text
    online = r.json()["predictions"]
    path = tmp_path / "requests.parquet"
    pq.write_table(pa.Table.from_pylist([{"customerID": f"c{i}", **rec} for i, rec in enumerate(recs)]), path)
    report = project.score(path, tmp_path / "scored.parquet", version=1, engine="native")
    assert report.rows == len(recs)
    batch = pq.read_table(tmp_path / "scored.parquet").to_pylist()
    np.testing.assert_allclose([p["probability"] for p in online], [b["probability"] for b in batch],
                               rtol=0, atol=1e-12)
    assert [p["decision"] for p in online] == [b["decision"] for b in batch]
    # and both are what the pipeline computes in this process, derived columns included
    _, bundle = project.registry.load(1)
    X = bundle.pipeline.transform_records(recs)
    np.testing.assert_array_equal(X, bundle.pipeline.transform_arrow(pa.Table.from_pylist(recs)))
    np.testing.assert_allclose([p["probability"] for p in online], bundle.booster.predict(X), rtol=0, atol=1e-12)
    names = bundle.pipeline.output_names
    assert np.isnan(X[0, names.index("log_total")]) and np.isnan(X[0, names.index("per_month")])
    assert X[1, names.index("per_month")] == recs[1]["TotalCharges"]  # tenure 0 -> floor 1
    assert X[2, names.index("tenure_bucket")] == 2  # a bound goes to the bucket above it
    te = bundle.pipeline.derived["payment_te"]
    assert X[3, names.index("payment_te")] == te.prior and X[4, names.index("payment_te")] == te.missing
    assert X[5, names.index("monthly_clipped")] == 100


def test_logged_requests_pass_the_skew_check(served):
    from tidal.updating.skew import skew_check

    project, server = served
    r = httpx.post(server.url + "/v1/predict", json=_requests(), timeout=30)
    assert r.status_code == 200
    _, bundle = project.registry.load(1)
    deadline = time.monotonic() + 20
    while True:
        result = skew_check(project.ws, bundle, 1)
        if result["rows"] >= 40 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert result["rows"] >= 40 and result["ok"], result
    assert result["feature_mismatches"] == 0 and result["max_score_difference"] <= 1e-9


def test_a_python_transform_refuses_onnx_export(served, tmp_path):
    project, _ = served
    with pytest.raises(StateError, match="'per_month' \\(transform 'charge_per_month'\\)") as info:
        project.export(tmp_path / "m.onnx", version=1)
    assert "natively" in info.value.fix
    assert not (tmp_path / "m.onnx").exists()


# ONNX -------------------------------------------------------------------------------------------
def _onnx():
    for module in ("onnx", "onnxmltools", "onnxruntime"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install 'tidal[export]')")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A churn model with the built-in derived kinds, exported to ONNX."""
    _onnx()
    root = tmp_path_factory.mktemp("derived_onnx")
    project = make_project(root / "project", derived=BUILT_IN)
    path = root / "churn.onnx"
    report = project.export(path)
    yield project, path, report
    project.close()
    shutil.rmtree(root, ignore_errors=True)


def test_export_with_derived_features_scores_like_the_bundle(exported):
    import onnxruntime as ort

    from tidal.serving import export as E

    project, path, report = exported
    assert report.max_abs_diff <= E.TOLERANCE and path.exists()
    _, bundle = project.registry.load("production")
    recs = _requests()
    table = pa.Table.from_pylist(recs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, _ = session.run(None, E.onnx_inputs(bundle.pipeline, table))
    np.testing.assert_allclose(score, bundle.booster.predict(bundle.pipeline.transform_records(recs)),
                               rtol=0, atol=E.TOLERANCE)
    # the graph's inputs are the raw columns only
    assert sorted(i.name for i in session.get_inputs()) == sorted(bundle.pipeline.features)


def test_derived_graph_columns_equal_the_pipeline():
    """Each kind's ONNX nodes give the pipeline's numbers on the edge values (log within a rounding step)."""
    _onnx()
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tidal.serving.onnx_graph import _Builder, _derived

    pipe = FeaturePipeline(features={"a": "numeric", "b": "numeric", "c": "categorical"}, derived={
        "log": D.Log("a"), "clip": D.Clip("a", -0.5, 5.0), "high": D.Clip("a", max=2.0),
        "bucket": D.Bucketize("a", (-1.0, 0.0, 2.5)), "ratio": D.Ratio("a", "b"),
        "te": D.TargetEncoding("c", smoothing=3.0)}).fit(
        {"c": ["u", "v", "u", None, "w"]}, target=[1, 0, 1, 1, 0])
    a = np.array([np.nan, -2.0, -1.0, -0.999, -0.5, 0.0, 1e-12, 2.5, 3.0, 1e6, -0.0, 1e308])
    b = np.array([1.0, 0.0, np.nan, 2.0, -0.0, 3.0, 1.0, 0.5, 0.0, 7.0, 2.0, 1e-10])  # the last ratio overflows
    c = ["u", "", "v", "w", "unseen", "u", "", "v", "w", "x", "u", "v"]  # "" is missing in the graph's inputs
    builder = _Builder()
    outs = [_derived(builder, t) for t in pipe.derived.values()]
    graph = helper.make_graph(
        builder.nodes, "derived", [helper.make_tensor_value_info("a", TensorProto.DOUBLE, [None]),
                                   helper.make_tensor_value_info("b", TensorProto.DOUBLE, [None]),
                                   helper.make_tensor_value_info("c", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info(o, TensorProto.DOUBLE, [None]) for o in outs], initializer=builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 3)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = np.column_stack(session.run(None, {"a": a, "b": b, "c": np.array(c, dtype=object)}))
    expected = pipe.transform({"a": a, "b": b, "c": [None if v == "" else v for v in c]})[:, 3:]
    np.testing.assert_array_equal(got[:, 1:], expected[:, 1:])
    np.testing.assert_allclose(got[:, 0], expected[:, 0], rtol=1e-15, atol=1e-15)
    assert np.isnan(got[:3, 0]).all() and not np.isnan(got[3:, 0]).any()
    assert np.isnan(got[-1, list(pipe.derived).index("ratio")])
