"""History features end to end on the flights sample: trained offline, served by a real server from the online
store (in memory and in Redis), and the values the server used (from its prediction log) equal the offline
point-in-time join of the same rows at the same times; an event ingested over HTTP reaches the next request."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import polars as pl
import pyarrow as pa
import pytest
import yaml

from tests.conftest import ROOT
from tests.data.sources.conftest import redis_url
from tests.serving.conftest import Server, free_port
from tidal.features.history import join_history, latest_rows, read_events
from tidal.features.store import RedisStore
from tidal.project import Project

FLIGHTS = ROOT / "examples" / "flights" / "flights_2013_01.csv"
SPLIT = "2013-01-25T00:00:00Z"  # flights before it are the lake; later ones are the requests
TOKEN = "s3cret-ingest"
HISTORY = {
    "flights_1d": {"agg": "count", "window": "1d"},
    "flights_7d": {"agg": "count", "window": "7d"},
    "distance_mean_7d": {"agg": "mean", "column": "distance", "window": "7d"},
    "distance_sum_7d": {"agg": "sum", "column": "distance", "window": "7d"},
    "distance_max_1d": {"agg": "max", "column": "distance", "window": "1d"},
    "dep_min_1d": {"agg": "min", "column": "sched_dep_time", "window": "1d"},
}
SPEC = {
    "name": "flights_history", "task": "binary", "target": "late", "positive_class": "1",
    "entity_key": "tailnum", "event_time": "time_hour", "exclude": ["flight"],
    "features": {"carrier": {"type": "categorical"}, "origin": {"type": "categorical"},
                 "dest": {"type": "categorical"}, "sched_dep_time": {"type": "numeric"},
                 "distance": {"type": "numeric"}},
    "history": HISTORY,
    "sources": [{"kind": "http", "token_env": "TIDAL_TEST_INGEST_TOKEN"}],
    "training": {"num_boost_round": 30},
    "serving": {"flush_interval_s": 0.2, "reload_interval_s": 0.2},
}
FEATURES = ["carrier", "origin", "dest", "sched_dep_time", "distance"]


def _flights() -> pl.DataFrame:
    return pl.read_csv(FLIGHTS, infer_schema=False)


@pytest.fixture(scope="module", params=["memory", "redis"])
def served(request, tmp_path_factory):
    """(project, server, store kind): the flights before SPLIT ingested, a model trained and promoted, a server."""
    spec = dict(SPEC)
    namespace = None
    if request.param == "redis":
        redis_url()  # skips (or fails under TIDAL_REQUIRE_SERVICES=1) without Redis
        namespace = f"test-{uuid.uuid4().hex[:10]}"
        # a long reload tick: what a second server sees after an ingest comes through the shared store
        spec.update(online_store={"kind": "redis", "namespace": namespace},
                    serving={"flush_interval_s": 0.2, "reload_interval_s": 60})
    root = tmp_path_factory.mktemp(f"history-{request.param}")
    (root / "tidal.yaml").write_text(yaml.safe_dump(spec))
    _flights().filter(pl.col("time_hour") < SPLIT).write_csv(root / "lake.csv")
    project = Project.open(root / "tidal.yaml")
    project.ingest(root / "lake.csv")
    project.train()
    project.promote(1, force=True)
    os.environ["TIDAL_TEST_INGEST_TOKEN"] = TOKEN  # the server subprocess inherits it
    server = Server(project.spec_path, free_port())
    yield project, server, request.param
    server.stop()
    if namespace:
        RedisStore(feature_names=list(project.spec.history), namespace=namespace, url=redis_url()).clear()
    project.close()
    shutil.rmtree(root, ignore_errors=True)


def _records(df: pl.DataFrame, *, with_time: bool = True) -> list[dict]:
    out = []
    for row in df.iter_rows(named=True):
        rec = {k: row[k] for k in FEATURES}
        rec.update(tailnum=row["tailnum"], sched_dep_time=float(row["sched_dep_time"]),
                   distance=float(row["distance"]))
        if with_time:
            rec["time_hour"] = row["time_hour"]
        out.append(rec)
    return out


def _predict(server: Server, records: list[dict]) -> list[str]:
    r = httpx.post(server.url + "/v1/predict", json=records, timeout=30)
    assert r.status_code == 200, r.text
    return [p["prediction_id"] for p in r.json()["predictions"]]


def _logged(project: Project, ids: list[str]) -> list[dict]:
    """The prediction log's rows of ``ids``, in that order (waiting for the server's flush)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        table = project.ws.lake.read("predictions")
        if table is not None:
            rows = {r["_id"]: r for r in pl.from_arrow(table).filter(pl.col("_id").is_in(ids)).to_dicts()}
            if len(rows) == len(ids):
                return [rows[i] for i in ids]
        time.sleep(0.2)
    raise AssertionError("the predictions were not logged in time")


def _offline(project: Project, logged: list[dict]) -> list[dict]:
    """The offline join of the logged rows (entity, time) against the lake's events."""
    table = pa.table({"tailnum": [r["tailnum"] for r in logged],
                      "time_hour": pa.array([r["time_hour"] for r in logged], pa.timestamp("us", tz="UTC"))})
    return join_history(table, project.spec, read_events(project.ws.lake, project.spec)).to_pylist()


def _same(logged: list[dict], offline: list[dict]) -> None:
    for got, want in zip(logged, offline):
        for name in HISTORY:
            a, b = got[name], want[name]
            assert (a is None and b is None) or a == b, (got["tailnum"], got["time_hour"], name, a, b)


def _ingest(server: Server, rows: list[dict]) -> dict:
    r = httpx.post(server.url + "/v1/ingest", json=rows, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["rows_accepted"] == len(rows), report
    return report


def test_served_history_equals_the_offline_join(served):
    project, server, _ = served
    later = _flights().filter(pl.col("time_hour") >= SPLIT).head(300)
    records = _records(later) + _records(later.head(20), with_time=False) + [
        dict(_records(later.head(1))[0], tailnum="N-NEVER-SEEN")]
    logged = _logged(project, _predict(server, records))
    offline = _offline(project, logged)
    _same(logged, offline)
    # not vacuous: most of these planes flew in the lake's week, and the rows carry their own times
    assert sum(r["flights_7d"] > 0 for r in logged[:300]) >= 150
    assert sum(r["distance_mean_7d"] is not None for r in logged[:300]) >= 150
    assert [r["time_hour"].isoformat() for r in logged[:3]] == [
        datetime.fromisoformat(t).isoformat() for t in later["time_hour"].head(3)]
    assert all(r["time_hour"] > datetime.now(timezone.utc) - timedelta(minutes=5) for r in logged[300:320])
    assert logged[-1]["flights_7d"] == 0.0 and logged[-1]["distance_sum_7d"] is None  # an entity never seen
    # the model was trained on the same columns, computed offline from the same events
    latest = {r["__tidal_entity"]: r for r in latest_rows(read_events(project.ws.lake, project.spec),
                                                          project.spec).to_dicts()}
    for rec in logged[:300]:
        if rec["tailnum"] in latest:
            assert rec["flights_7d"] == latest[rec["tailnum"]]["flights_7d"]


def test_an_event_ingested_over_http_reaches_the_next_request(served):
    project, server, kind = served
    events = read_events(project.ws.lake, project.spec)
    busiest = events.group_by("__tidal_entity").len().sort(["len", "__tidal_entity"], descending=True)
    plane = busiest["__tidal_entity"][0]
    newest = events.filter(pl.col("__tidal_entity") == plane)["__tidal_time"].max()
    ask = _records(_flights().filter(pl.col("tailnum") == plane).head(1))[0]
    ask["time_hour"] = (newest + timedelta(days=2)).isoformat()

    def served_values() -> dict:
        row = _logged(project, _predict(server, [ask]))[0]
        _same([row], _offline(project, [row]))  # always what the offline join says, from the lake of the moment
        return row

    before = served_values()
    template = _flights().filter(pl.col("tailnum") == plane).head(1).to_dicts()[0]
    # a new flight one hour after the plane's newest: the 1d and 7d windows now end there
    new = dict(template, time_hour=(newest + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), distance="4983")
    _ingest(server, [new])
    after = served_values()
    assert after["flights_7d"] == before["flights_7d"] + 1 and after["distance_max_1d"] == 4983.0
    # a late flight, older than the newest, inside its 7d window: recomputed from the lake, it counts
    late = dict(template, time_hour=(newest - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ"), distance="17")
    _ingest(server, [late])
    again = served_values()
    assert again["flights_7d"] == after["flights_7d"] + 1
    assert again["distance_sum_7d"] == pytest.approx(after["distance_sum_7d"] + 17)
    if kind == "redis":  # a second server shares the store: it sees the events at once (its own tick is 60 s away)
        other = Server(project.spec_path, free_port())
        try:
            _ingest(server, [dict(template, time_hour=(newest + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))])
            row = _logged(project, _predict(other, [ask]))[0]
            assert row["flights_7d"] == again["flights_7d"] + 1
            _same([row], _offline(project, [row]))
        finally:
            other.stop()


def test_materialize_fills_redis_from_the_lake(served):
    project, _, kind = served
    spec_path = str(project.spec_path)
    run = subprocess.run([sys.executable, "-m", "tidal.cli", "materialize", "--spec", spec_path, "--json"],
                         capture_output=True, text=True, timeout=120)
    if kind == "memory":  # the in-process store lives in the server: the command says so
        assert run.returncode != 0 and "kind: redis" in run.stdout + run.stderr
        return
    assert run.returncode == 0, run.stderr
    latest = latest_rows(read_events(project.ws.lake, project.spec), project.spec)
    assert yaml.safe_load(run.stdout)["entities_written"] == latest.height
    store = RedisStore(feature_names=list(project.spec.history), namespace=project.spec.online_store.namespace,
                       url=redis_url())
    try:
        for row in latest.head(50).to_dicts():
            got = store.get(row["__tidal_entity"])
            assert {n: got[n] for n in HISTORY} == {n: row[n] for n in HISTORY}
    finally:
        store.close()


def test_the_example_scores_alike_online_and_in_batch(tmp_path):
    """examples/flights/tidal_history.yaml (weather lookup and plane history): the in-process server and batch
    scoring give the same probabilities for the same later flights."""
    example = ROOT / "examples" / "flights"
    for name in ("tidal_history.yaml", "weather_2013_01.csv"):
        shutil.copy(example / name, tmp_path / name)
    flights = _flights()
    flights.filter(pl.col("time_hour") < SPLIT).write_csv(tmp_path / "flights_2013_01.csv")
    later = flights.filter(pl.col("time_hour") >= SPLIT).head(200)
    later.write_csv(tmp_path / "later.csv")
    from tidal.serving.app import ServerState

    with Project.open(tmp_path / "tidal_history.yaml") as project:
        project.spec = project.spec.model_copy(update={"training": project.spec.training.model_copy(
            update={"num_boost_round": 40})})
        project.ingest_lookup("weather")
        project.ingest()
        project.train()
        project.promote(1, force=True)
        state = ServerState(project.spec, project.ws)
        state.load_production()
        state.refresh_lookups()
        state.sync_history()
        fields = ["carrier", "origin", "dest", "sched_dep_time", "sched_arr_time", "distance", "tailnum", "time_hour"]
        records = [{k: (float(v) if k in ("sched_dep_time", "sched_arr_time", "distance") else
                        datetime.fromisoformat(v) if k == "time_hour" else v) for k, v in row.items() if k in fields}
                   for row in later.iter_rows(named=True)]
        _, online = state.score(records)
        report = project.score(tmp_path / "later.csv", tmp_path / "scored.parquet")
        assert report.rows == later.height
        batch = pl.read_parquet(tmp_path / "scored.parquet")["probability"].to_list()
        assert max(abs(o["probability"] - b) for o, b in zip(online, batch)) < 1e-12
        state.flush()
        logged = pl.from_arrow(project.ws.lake.read("predictions")).to_dicts()
        assert sum(r["plane_flights_7d"] > 0 for r in logged) >= 100 and all(r["temp"] is not None for r in logged[:50])
