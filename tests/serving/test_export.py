"""ONNX export: pipeline and model in one graph that scores like the bundle, within the size budget."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.cli.test_cli import assert_clean_failure, run
from tests.conftest import TELCO
from tests.serving.conftest import make_project, telco_records
from tidal.errors import StateError
from tidal.features.pipeline import FeaturePipeline
from tidal.serving.predictor import Predictor

for _module in ("onnx", "onnxmltools", "onnxruntime"):
    pytest.importorskip(_module, reason=f"{_module} is not installed (pip install 'tidal[export]')")

import onnxruntime as ort  # noqa: E402

from tidal.serving import export as E  # noqa: E402
from tidal.serving.onnx_graph import _Builder, _datetime_parts  # noqa: E402


@pytest.fixture(scope="module")
def churn(tmp_path_factory):
    """A promoted churn model: 5 categorical features (Telco), besides numbers and a boolean."""
    root = tmp_path_factory.mktemp("export")
    project = make_project(root / "project")
    yield project
    project.close()
    shutil.rmtree(root, ignore_errors=True)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_scores_like_the_bundle_on_telco(churn, tmp_path):
    path = tmp_path / "churn.onnx"
    report = churn.export(path)
    assert report.max_abs_diff <= E.TOLERANCE
    row, bundle = churn.registry.load("production")
    # held-out rows plus an edge case per feature (missing) and per categorical feature (unseen value)
    n_cats = sum(k == "categorical" for k in bundle.pipeline.features.values())
    assert report.rows == 7043 + E.EDGE_ROWS * (len(bundle.pipeline.features) + n_cats)
    assert report.onnx_bytes == path.stat().st_size and report.bundle_bytes == bundle.size_bytes
    assert report.version == row["version"]
    # a device feeds raw columns and reads the same decisions as the online predictor
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == list(bundle.pipeline.features)
    assert {i.name: i.type for i in session.get_inputs()}["Contract"] == "tensor(string)"
    records = telco_records(300)
    records[0]["Contract"], records[1]["PaymentMethod"], records[2]["TotalCharges"] = None, "Bitcoin", None
    feeds = E.onnx_inputs(bundle.pipeline, pa.Table.from_pylist(records))
    score, decision = session.run(["score", "decision"], feeds)
    predictor = Predictor(version=row["version"], bundle=bundle)
    expected = predictor.scores(records)
    np.testing.assert_allclose(score, expected, rtol=0, atol=E.TOLERANCE)
    assert decision.tolist() == predictor.outputs(expected)[2]


def test_export_checks_parity_on_given_data(churn, tmp_path):
    report = churn.export(tmp_path / "m.onnx", data=TELCO, rows=500)
    kinds = list(churn.registry.load("production")[1].pipeline.features.values())
    assert report.rows == 500 + E.EDGE_ROWS * (len(kinds) + kinds.count("categorical"))
    assert report.max_abs_diff <= E.TOLERANCE


def test_size_budget_is_enforced(churn, tmp_path):
    spec = churn.spec.model_copy(update={"guardrails": churn.spec.guardrails.model_copy(
        update={"max_model_size_mb": 0.01})})
    _, bundle = churn.registry.load("production")
    rows = churn._training_rows(churn.registry.resolve("production"), 200)
    with pytest.raises(StateError, match="cannot be exported") as info:
        E.export_onnx(bundle, tmp_path / "big.onnx", check_rows=rows, version=1,
                      max_size_mb=spec.guardrails.max_model_size_mb)
    assert [p.location for p in info.value.problems] == ["guardrails.max_model_size_mb"]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_parity_over_the_limit_is_refused(churn, tmp_path, monkeypatch):
    monkeypatch.setattr(E, "TOLERANCE", 0.0)
    with pytest.raises(StateError, match="cannot be exported") as info:
        churn.export(tmp_path / "m.onnx", rows=300)
    assert info.value.problems[0].location == "parity"
    assert list(tmp_path.iterdir()) == []


def test_regression_and_datetime_features(tmp_path):
    """A regression model with a datetime feature: the calendar arithmetic in ONNX matches the pipeline.
    (The numeric feature is called ``variable``, as the converter's own output is: no clash.)"""
    import lightgbm as lgb

    from tidal.registry.bundle import load_bundle, write_bundle

    rng = np.random.default_rng(3)
    n = 4000
    seconds = rng.uniform(-2e9, 4.1e9, n)  # 1906 to 2099
    when = pa.array((seconds * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"))
    table = pa.table({"when": when, "variable": pa.array(np.where(rng.random(n) < 0.05, np.nan, rng.normal(size=n))),
                      "city": pa.array(rng.choice(["a", "b", "c"], n))})
    pipe = FeaturePipeline(features={"when": "datetime", "variable": "numeric", "city": "categorical"}).fit(
        {"city": table.column("city").to_pylist()})
    X = pipe.transform_arrow(table)
    y = X[:, 0] + 3 * (X[:, 1] % 2) + X[:, 2] / 3 + np.nan_to_num(X[:, 3]) + (X[:, 4] == 1)
    booster = lgb.train({"objective": "regression", "verbose": -1, "min_data_in_leaf": 5},
                        lgb.Dataset(X, y, categorical_feature=pipe.categorical_indices), 60)
    write_bundle(tmp_path / "bundle", model_text=booster.model_to_string(), pipeline=pipe,
                 signature={"task": "regression", "offset": 0.5}, metrics={}, reference={})
    bundle = load_bundle(tmp_path / "bundle")
    report = E.export_onnx(bundle, tmp_path / "m.onnx", check_rows=table, version=1)
    assert report.max_abs_diff <= E.TOLERANCE
    assert any("seconds since the Unix epoch" in note for note in report.notes)
    score, decision = _session(tmp_path / "m.onnx").run(None, E.onnx_inputs(pipe, table.slice(0, 10)))
    np.testing.assert_allclose(decision, score + 0.5)


def test_datetime_parts_graph_matches_the_pipeline(tmp_path):
    from onnx import TensorProto, helper

    b = _Builder()
    parts = _datetime_parts(b, "t")
    graph = helper.make_graph(b.nodes, "parts", [helper.make_tensor_value_info("t", TensorProto.DOUBLE, [None])],
                              [helper.make_tensor_value_info(p, TensorProto.DOUBLE, [None]) for p in parts],
                              initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    utc = timezone.utc
    moments = [datetime(1970, 1, 1, tzinfo=utc), datetime(1969, 12, 31, 23, 59, 59, tzinfo=utc),
               datetime(2000, 2, 29, 12, tzinfo=utc), datetime(2000, 3, 1, tzinfo=utc),
               datetime(1900, 3, 1, 5, tzinfo=utc), datetime(2100, 2, 28, 23, tzinfo=utc),
               datetime(2024, 12, 31, 23, 59, 59, 999000, tzinfo=utc), datetime(1601, 1, 1, tzinfo=utc)]
    rng = np.random.default_rng(5)
    seconds = np.concatenate([[m.timestamp() for m in moments], rng.uniform(-1e10, 1e10, 5000), [np.nan]])
    got = np.column_stack(session.run(None, {"t": seconds}))
    column = pa.array((np.nan_to_num(seconds) * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"))
    column = pa.array(column.to_pylist()[:-1] + [None], pa.timestamp("us", tz="UTC"))
    expected = FeaturePipeline(features={"t": "datetime"}).transform_arrow(pa.table({"t": column}))
    np.testing.assert_array_equal(got, expected)


def test_cli_export_prints_parity_and_size(churn, tmp_path):
    result = run(churn.spec_path.parent, "export", "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                 "--rows", "500")
    assert result.returncode == 0, result.stderr
    assert "parity: max |onnx - native|" in result.stdout and "size:" in result.stdout and "MB" in result.stdout
    assert (tmp_path / "m.onnx").exists()
    refused = run(churn.spec_path.parent, "export", "--format", "pmml")
    assert "unsupported export format" in assert_clean_failure(refused)[0]
