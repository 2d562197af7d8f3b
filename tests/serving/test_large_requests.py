"""Large requests take the column-wise path (decoder, features, compiled model, one log chunk) and
answer and log exactly what the single-row path and batch scoring give for the same rows."""

from __future__ import annotations

import asyncio
import shutil
from datetime import datetime, timedelta, timezone

import httpx
import msgspec
import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pytest

from tests.conftest import TELCO
from tests.serving.conftest import make_project, telco_records
from tidal.infra.lake import Lake
from tidal.serving import app as app_module
from tidal.serving import compat_routes, compiled
from tidal.serving.app import LABEL_SCHEMA, create_app, prediction_ids
from tidal.serving.columns import RecordColumns
from tidal.serving.logbuffer import LogBuffer
from tidal.serving.predictor import Predictor
from tidal.serving.schema import record_decoder, record_model

N = 1000
needs_lleaves = pytest.mark.skipif(not compiled.available(),
                                   reason="lleaves is not installed (pip install 'tidal[fast]')")


class Client:
    """Requests to the app in-process, through its ASGI entry point (the hot route included)."""

    def __init__(self, app) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tidal")

    def post(self, path: str, **kw) -> httpx.Response:
        return self.loop.run_until_complete(self.client.post(path, **kw))


def records(n: int = N, offset: int = 0) -> list[dict]:
    keys = pl.read_csv(TELCO, infer_schema=False)["customerID"].slice(offset, n).to_list()
    return [dict(r, customerID=k) for r, k in zip(telco_records(n, offset), keys)]


@pytest.fixture(scope="module")
def served_in_process(tmp_path_factory):
    """(project, app, state): the churn model in production, the app driven in-process (no lifespan:
    nothing is flushed or reloaded behind the test's back)."""
    root = tmp_path_factory.mktemp("large")
    project = make_project(root / "project")
    app = create_app(project.spec, project.ws)
    state = app.state.tidal
    state.load_production()
    yield project, app, state
    project.close()
    shutil.rmtree(root, ignore_errors=True)


def _logged(project) -> dict[str, dict]:
    return {row["_id"]: row for row in project.ws.lake.read("predictions").to_pylist()}


@pytest.mark.parametrize("engine", ["compiled", "native"])
def test_a_1000_row_request_answers_as_single_rows_and_batch_scoring_and_logs_every_row(
        served_in_process, tmp_path, monkeypatch, engine):
    project, app, state = served_in_process
    predictor = state.predictor
    if engine == "compiled":
        if not compiled.available():
            pytest.skip("lleaves is not installed")
        assert predictor.compile()  # compiled now, not in the background: this request uses it
    else:
        monkeypatch.setattr(predictor, "_compiled", None)
        monkeypatch.setattr(predictor, "_compile_started", True)
    client = Client(app)
    recs = records()
    body = client.post("/v1/predict", json=recs).json()
    assert body["model_version"] == predictor.version
    big = body["predictions"]
    assert len(big) == N and len({p["prediction_id"] for p in big}) == N

    # the single-row path (LightGBM's single-row API) gives the same answers, to the last bit
    singles = {}
    for i in range(0, N, 25):
        one = client.post("/v1/predict", json=recs[i]).json()["predictions"][0]
        assert {k: one[k] for k in ("prediction", "probability", "decision")} == \
               {k: big[i][k] for k in ("prediction", "probability", "decision")}
        singles[i] = one["prediction_id"]

    # so does batch scoring of the same rows
    source = tmp_path / "telco.csv"
    source.write_text("".join(TELCO.read_text().splitlines(keepends=True)[:N + 1]))
    project.score(source, tmp_path / "out.parquet", engine="native")
    batch = pl.read_parquet(tmp_path / "out.parquet")
    assert batch["probability"].to_list() == [p["probability"] for p in big]
    assert batch["prediction"].to_list() == [p["prediction"] for p in big]
    assert batch["decision"].to_list() == [p["decision"] for p in big]

    # every row is logged, with the values it was scored on; a single request's row logs the same
    state.flush()
    logged = _logged(project)
    columns = state.logged_columns
    for rec, p in zip(recs, big):
        row = logged[p["prediction_id"]]
        assert (row["_version"], row["_score"], row["_prediction"], row["_decision"], row["_shadow"]) == \
               (predictor.version, p["probability"], p["prediction"], p["decision"], False)
        assert {c: row[c] for c in columns} == {c: rec.get(c) for c in columns}
    stamps = {logged[p["prediction_id"]]["_ts"] for p in big}
    assert len(stamps) == 1  # one request, one time
    for i, pid in singles.items():
        single, many = dict(logged[pid]), dict(logged[big[i]["prediction_id"]])
        for key in ("_id", "_ts"):
            single.pop(key), many.pop(key)
        assert single == many


def test_the_log_rows_are_the_same_by_either_path(served_in_process, monkeypatch):
    """Column-wise chunks (from decoded columns or from records) and one tuple a row give one table."""
    _, _, state = served_in_process
    predictor = state.predictor
    recs = records(40, offset=2000)
    recs[3]["TotalCharges"] = None
    scores = predictor.scores(recs)
    preds, _, decisions = predictor.outputs(scores)
    ids, at = prediction_ids(len(recs)), datetime(2024, 1, 2, tzinfo=timezone.utc)
    columns = RecordColumns.from_records(recs, list(recs[0]))
    numbers = (predictor.matrix(columns), predictor.bundle.pipeline.numeric_positions)
    assert {"tenure", "MonthlyCharges", "TotalCharges"} <= set(numbers[1])
    tables = []
    for given, columns_from, matrix in ((recs, 32, None), (columns, 32, None), (recs, 10_000, None),
                                        (columns, 32, numbers)):  # numeric features from the matrix
        monkeypatch.setattr(app_module, "COLUMNS_FROM", columns_from)
        state.predictions._rows.clear()
        state._log(given, ids, at, 7, scores, preds, decisions, shadow=True, numbers=matrix)
        tables.append(state.predictions.arrow(list(state.predictions._rows)))
    state.predictions._rows.clear()
    state.predictions._size = 0
    assert all(tables[0].equals(t) for t in tables[1:])
    assert tables[0].num_rows == 40 and tables[0].column("_shadow").to_pylist() == [True] * 40
    assert tables[0].column("TotalCharges")[3].as_py() is None  # missing: null, not NaN, by every path


def test_columns_score_as_records(served_in_process):
    _, _, state = served_in_process
    predictor = state.predictor
    recs = records(300, offset=500)
    recs[0]["TotalCharges"] = recs[1]["gender"] = None
    recs[2]["Contract"] = "a contract never seen"
    columns = RecordColumns.from_records(recs, list(recs[0]))
    assert np.array_equal(predictor.scores(columns), predictor.scores(recs))
    assert list(columns) == recs and columns[5] == recs[5] and columns[-1] == recs[-1] and columns[1:3] == recs[1:3]


def test_large_bad_requests_name_the_field_and_lenient_values_are_accepted(served_in_process):
    project, app, _ = served_in_process
    client = Client(app)
    recs = records(200, offset=3000)
    bad = [dict(r) for r in recs]
    bad[150]["tenure"] = "abc"
    r = client.post("/v1/predict", json=bad)
    assert r.status_code == 422
    assert [p["field"] for p in r.json()["error"]["problems"]] == ["body.150.tenure"]
    lenient = [dict(r) for r in recs]
    lenient[7]["tenure"] = str(lenient[7]["tenure"])  # msgspec refuses text for a number; pydantic accepts it
    got = client.post("/v1/predict", json=lenient).json()["predictions"]
    want = client.post("/v1/predict", json=recs).json()["predictions"]
    assert [p["probability"] for p in got] == [p["probability"] for p in want]


def test_record_decoder_columns_hold_what_the_records_hold():
    from pydantic import BaseModel, create_model

    model = create_model("R", __base__=BaseModel, t=(datetime | None, None), x=(float, ...), c=(str | None, None))
    rows = [{"t": "2024-01-02T03:04:05Z" if i % 3 else None, "x": i, "c": None if i % 5 == 0 else f"c{i}"}
            for i in range(50)]
    body = msgspec.json.encode(rows)
    as_records = record_decoder(model)(body)
    as_columns = record_decoder(model, columns_from=32)(body)
    assert isinstance(as_columns, RecordColumns) and len(as_columns) == 50
    assert list(as_columns) == as_records
    assert all(type(a[k]) is type(b[k]) for a, b in zip(as_columns, as_records) for k in a)
    assert isinstance(record_decoder(model, columns_from=32)(msgspec.json.encode(rows[:31])), list)
    assert record_decoder(model, columns_from=32)(msgspec.json.encode([dict(rows[0], t="not a time")] * 40)) is None


def test_log_buffer_keeps_chunks_and_rows_in_order_within_capacity(tmp_path):
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    buf = LogBuffer(lake=Lake(tmp_path), table="labels", schema=LABEL_SCHEMA, capacity=6)
    buf.append(("a", "1", now))
    assert buf.append_columns({"_id": ["b", "c"], "_label": ("0", None), "_ts": [now, now], "other": [1, 2]}, 2) == 2
    buf.append({"_id": "d", "_ts": now})
    assert buf.append_columns({"_id": np.array(["e", "f", "g"]), "_ts": [now] * 3}, 3) == 2  # one over capacity
    assert len(buf) == 6 and buf.dropped == 1 and not buf.append(("h", "1", now)) and buf.dropped == 2
    want = [{"_id": "a", "_label": "1", "_ts": now}, {"_id": "b", "_label": "0", "_ts": now},
            {"_id": "c", "_label": None, "_ts": now}, {"_id": "d", "_label": None, "_ts": now},
            {"_id": "e", "_label": None, "_ts": now}, {"_id": "f", "_label": None, "_ts": now}]
    assert buf.arrow(list(buf._rows)).equals(pa.Table.from_pylist(want, schema=LABEL_SCHEMA))
    assert buf.flush() == 6 and len(buf) == 0
    assert Lake(tmp_path).read("labels").to_pylist() == want


@needs_lleaves
def test_compile_exact_scores_bit_for_bit_as_lightgbm_with_categories_and_missing_values(served_in_process):
    project, _, state = served_in_process
    booster = state.predictor.bundle.booster
    predict = compiled.compile_exact(booster)
    assert predict is not None
    X = state.predictor.bundle.pipeline.transform_records(records(2000, offset=1000))
    X[::7, 0] = np.nan
    assert np.array_equal(predict(X), booster.predict(X, num_threads=1))
    edges = compiled.edge_rows(booster)
    assert np.isnan(edges).any() and (edges == 0).any()


@needs_lleaves
def test_a_compiled_model_that_differs_is_not_used(served_in_process, monkeypatch):
    _, bundle = served_in_process[0].registry.load(1)
    monkeypatch.setattr(compiled, "compile_booster",
                        lambda booster, **kw: lambda X: np.nextafter(booster.predict(X), 2.0))
    assert compiled.compile_exact(bundle.booster) is None
    predictor = Predictor(version=1, bundle=bundle)
    assert not predictor.compile()
    X = bundle.pipeline.transform_records(records(100))
    assert np.array_equal(predictor.predict(X), bundle.booster.predict(X, num_threads=1))


def test_log_buffer_converts_slab_by_slab_and_times_as_pyarrow_does(tmp_path, monkeypatch):
    from zoneinfo import ZoneInfo

    from tidal.infra import logrows

    monkeypatch.setattr(logrows, "SLAB", 3)
    paris = ZoneInfo("Europe/Paris")
    times = [datetime(2024, 10, 27, 2, 30, tzinfo=paris), datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris),
             None, datetime(1960, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc), datetime(2024, 3, 31, 2, 30, tzinfo=paris)]
    rows = [{"_id": f"r{i}", "_label": str(i), "_ts": times[i % len(times)]} for i in range(11)]
    buf = LogBuffer(lake=Lake(tmp_path), table="labels", schema=LABEL_SCHEMA, capacity=100)
    buf.extend(rows[:4])
    buf.append_columns({k: [r[k] for r in rows[4:]] for k in LABEL_SCHEMA.names}, 7)
    assert buf.arrow(list(buf._rows)).equals(pa.Table.from_pylist(rows, schema=LABEL_SCHEMA))
    naive = [dict(rows[0], _ts=datetime(2024, 1, 2, 3, 4)), rows[1]]  # naive: left to pyarrow
    assert buf.arrow([tuple(r.values()) for r in naive]).equals(pa.Table.from_pylist(naive, schema=LABEL_SCHEMA))
    # the server logs its own times as int microseconds since the epoch: the same instants
    as_micros = [dict(r, _ts=None if r["_ts"] is None else (r["_ts"] - datetime(1970, 1, 1, tzinfo=timezone.utc))
                      // timedelta(microseconds=1)) for r in rows]
    monkeypatch.setattr(logrows, "ROWS_A_SLAB", 4)
    mixed = [tuple(r.values()) for r in as_micros[:6]] + [tuple(r.values()) for r in rows[6:]]
    assert buf.arrow(mixed).equals(pa.Table.from_pylist(rows, schema=LABEL_SCHEMA))


@needs_lleaves
def test_the_server_compiles_the_model_in_the_background_after_a_large_request(served_in_process, monkeypatch):
    import threading

    from tidal.serving.routing import Deployment

    project, _, state = served_in_process
    _, bundle = project.registry.load(1)
    predictor = Predictor(version=1, bundle=bundle)
    monkeypatch.setattr(state, "deployment", Deployment(production=predictor))
    state.score(records(5))
    assert predictor._compiled is None and not predictor._compile_started  # small requests never compile
    _, first = state.score(records(50))  # answered by Booster.predict while the model compiles
    for thread in threading.enumerate():
        if thread.name == "tidal-compile-v1":
            thread.join(timeout=60)
    assert predictor._compiled is not None
    _, again = state.score(records(50))
    assert [p["probability"] for p in again] == [p["probability"] for p in first]


def test_after_a_large_request_the_log_holds_its_rows_and_the_collector_runs_again(served_in_process):
    """The hot route appends to the log and resumes the garbage collector once the answer is sent,
    whether the request was answered, refused or its log append failed."""
    import gc

    _, app, state = served_in_process
    client = Client(app)
    assert gc.isenabled()
    before = len(state.predictions)
    recs = records(40, offset=3000)
    response = client.post("/v1/predict", json=recs)
    assert response.status_code == 200 and len(state.predictions) == before + 40
    assert gc.isenabled()
    bad = client.post("/v1/predict", json=[dict(r, tenure="many") for r in records(400)])
    assert bad.status_code == 422 and gc.isenabled() and len(state.predictions) == before + 40

    def broken(*args, **kwargs):
        raise RuntimeError("the buffer is gone")

    state._log, log = broken, state._log
    try:
        response = client.post("/v1/predict", json=recs)
    finally:
        state._log = log
    assert response.status_code == 200 and len(response.json()["predictions"]) == 40  # answered all the same
    assert gc.isenabled() and len(state.predictions) == before + 40


def _oip_body(recs, spec, *, binary: bool) -> tuple[bytes, dict]:
    """An OIP v2 infer request for ``recs``: JSON tensors, or Triton's binary tensor extension."""
    inputs, blobs = [], []
    kinds = {name: feat.type for name, feat in spec.features.items()} | {spec.entity_key: "categorical"}
    for name, kind in kinds.items():
        values = [r.get(name) for r in recs]
        dtype = {"numeric": "FP64", "boolean": "BOOL"}.get(kind, "BYTES")
        tensor = {"name": name, "shape": [len(recs)], "datatype": dtype}
        if not binary:
            tensor["data"] = values
        else:
            if dtype == "FP64":
                blob = np.array([np.nan if v is None else v for v in values], dtype="<f8").tobytes()
            elif dtype == "BOOL":
                blob = np.array(values, dtype=bool).tobytes()
            else:
                blob = b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in map(str, values))
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        inputs.append(tensor)
    head = orjson.dumps({"inputs": inputs, "outputs": [{"name": "probability"}, {"name": "prediction_id"}]})
    return head + b"".join(blobs), ({"inference-header-content-length": str(len(head))} if binary else {})


@pytest.mark.parametrize("binary", [False, True])
def test_a_large_oip_request_skips_the_record_model_and_answers_and_logs_as_v1(served_in_process, monkeypatch,
                                                                                binary):
    from tidal.serving import compat_routes

    project, app, state = served_in_process
    client = Client(app)
    recs = [r for r in records(300, offset=4000) if None not in r.values()][:64]
    want = [p["probability"] for p in client.post("/v1/predict", json=recs).json()["predictions"]]
    validated = []
    validate = compat_routes._validate
    monkeypatch.setattr(compat_routes, "_validate", lambda *a: validated.append(1) or validate(*a))
    body, headers = _oip_body(recs, project.spec, binary=binary)
    r = client.post("/v2/models/churn/infer", content=body, headers=headers)
    assert r.status_code == 200 and not validated  # the columnar path: no record model
    outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert outputs["probability"] == want
    state.flush()
    logged = _logged(project)
    for rec, pid in zip(recs, outputs["prediction_id"]):
        assert {c: logged[pid][c] for c in state.logged_columns} == {c: rec.get(c) for c in state.logged_columns}
    # a missing value (NaN in a binary tensor, null in JSON) or a small request: the records path, same answers
    gap = [dict(recs[0], TotalCharges=None)] + recs[1:]
    body, headers = _oip_body(gap, project.spec, binary=binary)
    r = client.post("/v2/models/churn/infer", content=body, headers=headers)
    assert r.status_code == 200 and validated == [1] * (1 if binary else 0)  # JSON null: optional, still columns
    assert r.json()["outputs"][0]["data"][1:] == want[1:]
    body, headers = _oip_body(recs[:5], project.spec, binary=binary)
    assert client.post("/v2/models/churn/infer", content=body, headers=headers).json()["outputs"][0]["data"] == \
        want[:5]
    # the versioned route (FastAPI's) answers as the hot route does; both are counted under /v2
    body, headers = _oip_body(recs, project.spec, binary=binary)
    versioned = client.post(f"/v2/models/churn/versions/{state.predictor.version}/infer", content=body,
                            headers=headers)
    assert versioned.json()["outputs"][0]["data"] == want
    assert client.post("/v2/models/other/infer", content=body, headers=headers).status_code == 404
    counted = client.loop.run_until_complete(client.client.get("/metrics")).text
    assert 'tidal_requests_total{route="/v2",status="200"}' in counted


def test_start_up_moves_what_it_left_alive_out_of_the_collectors_way(served_in_process):
    """After start-up the server freezes the surviving objects: a full collection no longer walks them."""
    import gc

    _, app, state = served_in_process

    async def start_and_stop() -> int:
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count()

    gc.unfreeze()
    try:
        frozen = asyncio.new_event_loop().run_until_complete(start_and_stop())
    finally:
        gc.unfreeze()
    assert frozen > 10_000 and state.predictor is not None


def test_the_oip_columnar_path_refuses_what_the_records_path_refuses_and_makes_floats(served_in_process):
    project, app, state = served_in_process
    client = Client(app)
    recs = [dict(r, tenure=int(r["tenure"])) for r in records(300, offset=4000) if None not in r.values()][:40]
    body, _ = _oip_body(recs, project.spec, binary=False)
    request = orjson.loads(body)
    tenure = next(t for t in request["inputs"] if t["name"] == "tenure")
    assert all(type(v) is int for v in tenure["data"])  # JSON ints for a numeric feature
    ok = client.post("/v2/models/churn/infer", json=request)
    want = [p["probability"] for p in client.post("/v1/predict", json=recs).json()["predictions"]]
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == want
    columns = compat_routes._oip_columns(request, compat_routes._record_fields(record_model(project.spec)))
    assert columns is not None and all(type(v) is float for v in columns.column("tenure"))
    for broken, problem in (({"data": [1] * 40, "datatype": "FP64", "shape": [40]}, "needs a name"),
                            ({"name": ["tenure"], "data": [1] * 40}, "needs a name"),
                            ({"name": "junk", "data": [0] * 7}, "different lengths")):
        r = client.post("/v2/models/churn/infer", json={"inputs": request["inputs"] + [broken]})
        assert r.status_code == 422 and problem in r.json()["error"]["message"], r.text
