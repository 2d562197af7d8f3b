"""The HTTP server over a real socket: contract, errors, metrics, logging, hot swap, shutdown."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import Server, free_port, make_project, telco_records


def test_predict_one_and_many(served):
    project, server = served
    recs = telco_records(5)
    one = httpx.post(server.url + "/v1/predict", json=recs[0]).json()
    assert one["model_version"] == 1 and len(one["predictions"]) == 1
    p = one["predictions"][0]
    assert 0.0 <= p["probability"] <= 1.0
    assert p["prediction"] in ("Yes", "No")
    assert p["decision"] in ("act", "no_action")
    many = httpx.post(server.url + "/v1/predict", json=recs).json()
    assert len(many["predictions"]) == 5
    assert len({q["prediction_id"] for q in many["predictions"]}) == 5
    # the same record scores the same, and the decision follows the cost-optimal threshold
    assert many["predictions"][0]["probability"] == pytest.approx(p["probability"])
    threshold = project.registry.load(1)[1].signature["threshold"]
    for q in many["predictions"]:
        assert (q["decision"] == "act") == (q["probability"] >= threshold)


@pytest.mark.parametrize("body, field", [
    ({"gender": "Male"}, "body.tenure"),
    ("WRONG_TYPE", "body.tenure"),
    ([], None),
    ("not json", None),
])
def test_bad_requests_get_422_naming_the_field(served, body, field):
    _, server = served
    if body == "WRONG_TYPE":
        body = dict(telco_records(1)[0], tenure="twelve")
    if body == "not json":
        r = httpx.post(server.url + "/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
    else:
        r = httpx.post(server.url + "/v1/predict", json=body)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert "Traceback" not in r.text
    if field:
        assert field in [p["field"] for p in err["problems"]]


def test_one_error_shape_everywhere(served):
    _, server = served
    for r in (httpx.get(server.url + "/nope"), httpx.get(server.url + "/v1/predict"),
              httpx.post(server.url + "/v1/feedback", json={"label": "Yes"})):
        assert r.status_code in (404, 405, 422)
        body = r.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])


def test_openapi_publishes_the_generated_contract(served):
    project, server = served
    api = httpx.get(server.url + "/openapi.json").json()
    record = api["components"]["schemas"]["ChurnRecord"]
    assert set(project.spec.features) <= set(record["properties"])
    assert "tenure" in record["required"] and "TotalCharges" not in record["required"]
    assert "/v1/predict" in api["paths"] and "/v1/feedback" in api["paths"]


def test_health_ready_metrics(served):
    _, server = served
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json()["model_version"] in (1, 2)
    httpx.post(server.url + "/v1/predict", json=telco_records(1)[0])
    text = httpx.get(server.url + "/metrics").text
    assert "tidal_predictions_total" in text
    assert 'tidal_requests_total{route="/v1/predict",status="200"}' in text


def test_feedback_and_log_reach_the_lake(served):
    project, server = served
    before = project.ws.lake.read("predictions")
    n_before = 0 if before is None else before.num_rows
    preds = httpx.post(server.url + "/v1/predict", json=telco_records(7, offset=100)).json()["predictions"]
    fb = [{"prediction_id": p["prediction_id"], "label": "Yes"} for p in preds]
    assert httpx.post(server.url + "/v1/feedback", json=fb).json() == {"accepted": 7}
    wanted = {p["prediction_id"] for p in preds}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a flush may take a request's rows in two parts: wait for both logs
        labels, log = project.ws.lake.read("labels"), project.ws.lake.read("predictions")
        if labels is not None and wanted <= set(labels.column("_id").to_pylist()) \
                and log is not None and wanted <= set(log.column("_id").to_pylist()):
            break
        time.sleep(0.2)
    else:
        pytest.fail("labels or predictions were not flushed to the lake")
    assert log.num_rows >= n_before + 7


def test_hot_swap_under_load_fails_no_request(served):
    project, server = served
    recs = telco_records(20)
    failures, versions, stop = [], set(), threading.Event()

    def hammer():
        with httpx.Client(base_url=server.url, timeout=10) as c:
            i = 0
            while not stop.is_set():
                r = c.post("/v1/predict", json=recs[i % 20])
                i += 1
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    versions.add(r.json()["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        current = project.registry.resolve("production")["version"]
        target = 2 if current == 1 else 1
        project.promote(target, reason="test hot swap")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and target not in versions:
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert {current, target} <= versions


def test_not_ready_without_production_model(tmp_path):
    project = make_project(tmp_path / "p", promote=False)
    server = Server(project.spec_path, free_port())
    try:
        r = httpx.get(server.url + "/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        r = httpx.post(server.url + "/v1/predict", json=telco_records(1)[0])
        assert r.status_code == 503
    finally:
        server.stop()
        project.close()


def test_tampered_bundle_is_refused_and_changes_nothing(tmp_path):
    project = make_project(tmp_path / "p", promote=False)
    row = project.registry.resolve(1)
    model = __import__("pathlib").Path(row["bundle_path"]) / "model.txt"
    model.write_text(model.read_text().replace("num_leaves", "num_leafs", 1))
    from tidal.errors import BundleIntegrityError

    with pytest.raises(BundleIntegrityError, match="model.txt"):
        project.promote(1)
    assert project.registry.resolve(1)["stage"] == "candidate"
    project.close()


def _writer_processes(pid: int) -> list[int]:
    """The log writer processes among ``pid``'s children."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children
            if b"tidal.infra.logwriter" in Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ")]


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_graceful_shutdown_flushes_every_prediction(tmp_path, writer):
    project = make_project(tmp_path / "p", serving={"flush_interval_s": 600, "reload_interval_s": 0.2,
                                                    "log_writer": writer})
    server = Server(project.spec_path, free_port())
    try:
        with httpx.Client(base_url=server.url) as c:
            for rec in telco_records(30):
                assert c.post("/v1/predict", json=rec).status_code == 200
        assert project.ws.lake.read("predictions") is None  # nothing flushed yet
        writers = _writer_processes(server.proc.pid)
        assert len(writers) == (1 if writer == "process" else 0)  # the process starts with the server
    finally:
        server.stop()
    assert server.proc.returncode == 0  # SIGTERM: a graceful stop is a clean exit
    log = project.ws.lake.read("predictions")
    assert log is not None and log.num_rows == 30
    assert all(not Path(f"/proc/{w}").exists() for w in writers)  # it stopped with the server
    project.close()


def test_a_half_full_log_buffer_is_flushed_before_its_interval_and_nothing_is_dropped(tmp_path):
    # a 10-minute interval and room for 400 rows: bursts of 300 rows a second are only kept by early flushes
    project = make_project(tmp_path / "p", serving={"flush_interval_s": 600, "log_buffer_size": 400})
    server = Server(project.spec_path, free_port())
    try:
        with httpx.Client(base_url=server.url) as c:
            batch = telco_records(100)
            assert c.post("/v1/predict", json=batch).status_code == 200
            assert c.post("/v1/predict", json=batch[:50]).status_code == 200
            assert project.ws.lake.read("predictions") is None  # 150 rows: under half, waiting for the interval
            for _ in range(12):  # 1,200 rows in about 4 s, three times the buffer
                assert c.post("/v1/predict", json=batch).status_code == 200
                time.sleep(0.3)
            deadline = time.monotonic() + 20
            while (log := project.ws.lake.read("predictions")) is None or log.num_rows < 1200:
                assert time.monotonic() < deadline, None if log is None else log.num_rows
                time.sleep(0.2)
            dropped = [line for line in c.get("/metrics").text.splitlines() if line.startswith("tidal_log_dropped ")]
        assert dropped == ["tidal_log_dropped 0.0"]
    finally:
        server.stop()
    assert project.ws.lake.read("predictions").num_rows == 1350
    project.close()
