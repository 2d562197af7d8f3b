"""Lookups: a second source joined point-in-time, on real Delta tables.

A reading taken after an event is never used; max_age_hours turns a stale reading into a
null; training records the lookup versions and evaluation rebuilds the same set; the online
index gives exactly the offline join's values; a new lookup batch reaches a running server.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import polars as pl
import pyarrow as pa
import pytest
import yaml

from tests.conftest import ROOT
from tests.serving.conftest import Server, free_port
from tidal.data.ingest import ingest_frame
from tidal.data.lookups import ingest_lookup_file, ingest_lookup_frame
from tidal.data.quarantine import release
from tidal.errors import DataValidationError, SpecError, StateError
from tidal.features.lookups import join_lookups
from tidal.features.online import OnlineLookups
from tidal.project import Project
from tidal.serving.app import ServerState
from tidal.spec import parse_spec
from tidal.training.dataset import training_table

UTC = timezone.utc
EXAMPLE = ROOT / "examples" / "flights"
FLIGHTS, WEATHER = EXAMPLE / "flights_2013_01.csv", EXAMPLE / "weather_2013_01.csv"
WEATHER_FEATURES = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
REQUEST_FIELDS = ["carrier", "origin", "dest", "sched_dep_time", "sched_arr_time", "distance", "time_hour"]


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2013, 1, day, hour, minute, tzinfo=UTC)


# --- the join itself, on a tiny hand-made case ----------------------------------------------------

SMALL = {
    "name": "small", "task": "binary", "target": "late", "event_time": "t",
    "features": {"origin": {"type": "categorical"}, "distance": {"type": "numeric"}},
    "lookups": {"weather": {"source": {"path": "unused.csv"}, "keys": ["origin"], "time": "t",
                            "features": {"temp": {"type": "numeric"}, "sky": {"type": "categorical"}}}},
}


def _small_spec(max_age_hours=None):
    spec = dict(SMALL, lookups={"weather": dict(SMALL["lookups"]["weather"], max_age_hours=max_age_hours)})
    return parse_spec(spec)


def _ingest_small(ws, spec, flights, readings):
    ingest_frame(ws, spec, pl.DataFrame(flights, orient="row", schema=["origin", "t", "distance", "late"]),
                 batch_id="b-flights", source="test", content_sha256="flights")
    ingest_lookup_frame(ws, spec, "weather", pl.DataFrame(readings, orient="row", schema=["origin", "t", "temp", "sky"]),
                        batch_id="b-weather", source="test", content_sha256="weather")
    return training_table(ws, spec, {"events": ws.lake.version("events")})


def _online(ws, spec, table):
    index = OnlineLookups(spec)
    assert index.refresh(ws.lake) == ["weather"]
    records = [{"origin": o, "t": t} for o, t in zip(table.column("origin").to_pylist(), table.column("t").to_pylist())]
    index.lookup(records)
    return records


def test_a_reading_after_the_event_is_never_used(sqlite_workspace):
    spec = _small_spec()
    flights = [("EWR", "2013-01-01T12:00:00Z", "100", "1"),   # readings 2 h before and 30 min after
               ("EWR", "2013-01-01T13:00:00Z", "100", "0"),   # after both: the newer one
               ("JFK", "2013-01-01T12:00:00Z", "100", "0"),   # a reading at exactly the event time counts
               ("LGA", "2013-01-01T12:00:00Z", "100", "1"),   # only a later reading: nothing
               ("SFO", "2013-01-01T12:00:00Z", "100", "0")]   # no reading of this key at all
    readings = [("EWR", "2013-01-01T10:00:00Z", "1.0", "clear"),
                ("EWR", "2013-01-01T12:30:00Z", "99.0", "storm"),
                ("JFK", "2013-01-01T12:00:00Z", "5.0", "fog"),
                ("LGA", "2013-01-01T12:00:01Z", "7.0", "snow")]
    table = _ingest_small(sqlite_workspace, spec, flights, readings)
    assert table.column("temp").to_pylist() == [1.0, 99.0, 5.0, None, None]
    assert table.column("sky").to_pylist() == ["clear", "storm", "fog", None, None]
    assert table.schema.field("temp").type == pa.float64() and table.schema.field("sky").type == pa.string()
    # the online index applies the same rule
    online = _online(sqlite_workspace, spec, table)
    assert [r["temp"] for r in online] == [1.0, 99.0, 5.0, None, None]
    assert [r["sky"] for r in online] == ["clear", "storm", "fog", None, None]


@pytest.mark.parametrize("max_age, expected", [(3, [None, 2.0, 3.0]), (None, [1.0, 2.0, 3.0])])
def test_max_age_turns_a_stale_reading_into_null(sqlite_workspace, max_age, expected):
    spec = _small_spec(max_age)
    flights = [("EWR", "2013-01-01T12:00:00Z", "100", "1"),
               ("JFK", "2013-01-01T12:00:00Z", "100", "0"),
               ("LGA", "2013-01-01T12:00:00Z", "100", "0")]
    readings = [("EWR", "2013-01-01T08:59:59Z", "1.0", "a"),   # 3 h 1 s old
                ("JFK", "2013-01-01T09:00:00Z", "2.0", "b"),   # exactly 3 h: still fresh
                ("LGA", "2013-01-01T11:00:00Z", "3.0", "c")]
    table = _ingest_small(sqlite_workspace, spec, flights, readings)
    assert table.column("temp").to_pylist() == expected
    assert [r["temp"] for r in _online(sqlite_workspace, spec, table)] == expected


def test_a_later_batch_corrects_a_reading_and_versions_pin_the_old_one(sqlite_workspace):
    ws, spec = sqlite_workspace, _small_spec()
    table = _ingest_small(ws, spec, [("EWR", "2013-01-01T12:00:00Z", "100", "1")],
                          [("EWR", "2013-01-01T11:00:00Z", "1.0", "a")])
    assert table.column("temp").to_pylist() == [1.0]
    ingest_lookup_frame(ws, spec, "weather", pl.DataFrame({"origin": ["EWR"], "t": ["2013-01-01T11:00:00Z"],
                                                           "temp": ["2.0"], "sky": ["b"]}),
                        batch_id="b-fix", source="test", content_sha256="fix")
    events = ws.lake.read("events")
    assert join_lookups(events, spec, ws.lake).column("temp").to_pylist() == [2.0]  # the last ingested wins
    assert join_lookups(events, spec, ws.lake, {"weather": 0}).column("temp").to_pylist() == [1.0]
    with pytest.raises(StateError, match="version 7 of lookup 'weather' does not exist"):
        join_lookups(events, spec, ws.lake, {"weather": 7})


# --- lookup ingestion ------------------------------------------------------------------------------

def test_lookup_ingestion_validates_quarantines_and_is_idempotent(sqlite_workspace, tmp_path):
    ws, spec = sqlite_workspace, _small_spec()
    path = tmp_path / "weather.csv"
    path.write_text("origin,t,temp,sky,extra\n"
                    "EWR,2013-01-01T10:00:00Z,1.5,clear,x\n"
                    "EWR,2013-01-01T11:00:00Z,hot,clear,x\n"      # not a number
                    ",2013-01-01T11:00:00Z,3,clear,x\n"           # no key
                    "JFK,yesterday,4,clear,x\n")                  # no valid time
    report = ingest_lookup_file(ws, spec, "weather", path)
    assert (report.rows_total, report.rows_accepted, report.rows_quarantined) == (4, 1, 3)
    assert report.lookup == "weather" and report.lookup_version == 0 and report.events_version is None
    assert report.dropped_columns == ["extra"]
    assert set(report.reasons) == {"temp", "origin", "t"}
    assert ws.lake.read("events") is None  # lookup rows never reach the events table
    quarantined = ws.lake.read("quarantine").to_pylist()
    assert {q["_batch_id"] for q in quarantined} == {report.batch_id} and len(quarantined) == 3
    again = ingest_lookup_file(ws, spec, "weather", path)
    assert again.already_ingested and again.batch_id == report.batch_id and again.lookup_version == 0
    assert ws.lake.version("lookup_weather") == 0
    # a person releases the batch: the rows still failing stay, the rest go to the lookup's table
    out = release(ws, spec, report.batch_id, actor="tester", reason="checked")
    assert out["lookup"] == "weather" and out["released"] == 0 and out["still_failing"] == 3
    with pytest.raises(DataValidationError, match="required column"):
        ingest_lookup_frame(ws, spec, "weather", pl.DataFrame({"origin": ["EWR"], "temp": ["1"]}),
                            batch_id="b-x", source="test", content_sha256="x")
    with pytest.raises(SpecError, match="no lookup named 'rain'"):
        ingest_lookup_file(ws, spec, "rain", path)


def test_spec_rules_for_lookups():
    lookup = SMALL["lookups"]["weather"]
    with pytest.raises(SpecError) as info:
        parse_spec(dict(SMALL, event_time=None))
    assert [p.location for p in info.value.problems] == ["event_time"]
    clash = dict(lookup, features={"distance": {"type": "numeric"}, "origin": {"type": "numeric"}})
    with pytest.raises(SpecError) as info:
        parse_spec(dict(SMALL, lookups={"weather": clash}))
    locations = {p.location for p in info.value.problems}
    assert {"lookups.weather.features.distance", "lookups.weather.keys"} <= locations
    numeric_key = dict(SMALL, features={"origin": {"type": "numeric"}, "distance": {"type": "numeric"}})
    with pytest.raises(SpecError, match="problem"):
        parse_spec(numeric_key)
    with pytest.raises(SpecError) as info:
        parse_spec(dict(SMALL, lookups={"bad-name": lookup}))
    assert info.value.problems[0].location.startswith("lookups.bad-name")
    spec = parse_spec(SMALL)
    assert list(spec.model_features) == ["origin", "distance", "temp", "sky"]
    assert list(spec.features) == ["origin", "distance"] and spec.lookup_keys == ["origin"]


def test_a_key_that_is_not_a_feature_is_kept_and_required(sqlite_workspace):
    raw = dict(SMALL, features={"distance": {"type": "numeric"}})
    spec = parse_spec(raw)
    frame = pl.DataFrame({"origin": ["EWR", None], "t": ["2013-01-01T12:00:00Z"] * 2, "distance": ["1", "2"],
                          "late": ["1", "0"]})
    report = ingest_frame(sqlite_workspace, spec, frame, batch_id="b-1", source="t", content_sha256="1")
    assert (report.rows_accepted, report.rows_quarantined) == (1, 1)
    assert sqlite_workspace.lake.read("events").column("origin").to_pylist() == ["EWR"]
    with pytest.raises(DataValidationError, match="required column"):
        ingest_frame(sqlite_workspace, spec, frame.drop("origin"), batch_id="b-2", source="t", content_sha256="2")


# --- the flights example: training, evaluation, online/offline parity, serving --------------------

def flights_project(root: Path, **overrides) -> Project:
    raw = yaml.safe_load((EXAMPLE / "tidal.yaml").read_text())
    raw["sources"] = [{"kind": "file", "path": str(FLIGHTS)}]
    raw["lookups"]["weather"]["source"]["path"] = str(WEATHER)
    raw["training"] = {"num_boost_round": 40}
    raw["serving"] = {"flush_interval_s": 0.2, "reload_interval_s": 0.2}
    raw.update(overrides)
    root.mkdir(parents=True, exist_ok=True)
    (root / "tidal.yaml").write_text(yaml.safe_dump(raw))
    project = Project.open(root / "tidal.yaml")
    project.ingest_lookup("weather")
    project.ingest()
    return project


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("flights")
    project = flights_project(root)
    result = project.train()
    yield project, result
    project.close()
    shutil.rmtree(root, ignore_errors=True)


def test_training_records_lookup_versions_and_evaluate_reproduces(trained):
    project, result = trained
    assert result.data_versions == {"events": 0, "lookups": {"weather": 0}}
    assert project.runs()[0]["data_versions"] == result.data_versions
    _, bundle = project.registry.load(result.version)
    assert set(WEATHER_FEATURES) <= set(bundle.pipeline.features)  # weather is a model input
    assert set(WEATHER_FEATURES) <= set(bundle.reference["features"])  # and monitored for drift
    assert bundle.signature["lookups"]["weather"]["keys"] == ["origin"]
    # requests carry the keys and (optionally) the time, not the weather
    assert set(bundle.signature["inputs"]) == {*project.spec.features, "time_hour"}
    assert bundle.signature["inputs"]["time_hour"] == {"type": "datetime", "nullable": True}
    table = training_table(project.ws, project.spec, result.data_versions)
    assert table.num_rows == 5000 and table.column("temp").null_count == 0
    report = project.evaluate(result.version)
    assert report["test"] == result.metrics["test"]


def test_the_poisoning_guard_scores_batches_with_their_weather(trained):
    project, result = trained
    project.promote(result.version, force=True)
    guard = project.guard_model()
    _, bundle = project.registry.load(result.version)
    events = project.ws.lake.read("events").slice(0, 300)
    frame = pl.from_arrow(events).drop([c for c in events.column_names if c.startswith("_")])
    joined = join_lookups(events, project.spec, project.ws.lake)
    assert list(guard.score(frame)) == list(bundle.booster.predict(bundle.pipeline.transform_arrow(joined)))


def test_cli_ingests_a_lookup_file_or_its_source(tmp_path):
    from tests.cli.test_cli import assert_clean_failure, run

    raw = yaml.safe_load((EXAMPLE / "tidal.yaml").read_text())
    raw["lookups"]["weather"]["source"]["path"] = str(WEATHER)
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(raw))
    first = run(tmp_path, "ingest", "--lookup", "weather")
    assert first.returncode == 0, first.stderr
    assert "2226 of 2226 rows accepted, 0 quarantined (lookup_weather version 0)" in first.stdout
    again = run(tmp_path, "ingest", "--lookup", "weather", str(WEATHER), "--json")
    assert json.loads(again.stdout)[0]["already_ingested"] is True
    lines = assert_clean_failure(run(tmp_path, "ingest", "--lookup", "rain"))
    assert "no lookup named 'rain'" in lines[0]


def _offline_and_requests(project, n=500):
    """n flights, their times moved by up to 5 h either way and some keys unknown, as rows and requests."""
    events = project.ws.lake.read("events").slice(0, 5000)
    rng = random.Random(5)
    rows = rng.sample(range(events.num_rows), n)
    sample = events.take(rows)
    times = [t + timedelta(minutes=rng.randint(-300, 300)) for t in sample.column("time_hour").to_pylist()]
    origins = [o if i % 50 else "XXX" for i, o in enumerate(sample.column("origin").to_pylist())]
    sample = sample.set_column(sample.column_names.index("time_hour"), "time_hour",
                               pa.array(times, pa.timestamp("us", tz="UTC")))
    sample = sample.set_column(sample.column_names.index("origin"), "origin", pa.array(origins))
    requests = [{k: v for k, v in r.items() if k in REQUEST_FIELDS} for r in sample.to_pylist()]
    return join_lookups(sample, project.spec, project.ws.lake), requests


def test_online_index_gives_the_offline_values(trained):
    project, _ = trained
    offline, requests = _offline_and_requests(project)
    index = OnlineLookups(project.spec)
    assert index.refresh(project.ws.lake) == ["weather"] and index.versions == {"weather": 0}
    assert index.refresh(project.ws.lake) == []  # no new version: nothing rebuilt
    index.lookup(requests)
    expected = offline.select(WEATHER_FEATURES).to_pylist()
    assert [{f: r[f] for f in WEATHER_FEATURES} for r in requests] == expected
    filled = sum(r["temp"] is not None for r in expected)
    assert 300 < filled < 500  # real readings, and real misses (unknown keys, over 3 h old)
    # a request without a time is looked up as of now, and says so
    rec = {"origin": "EWR"}
    index.lookup([rec], now=at(11, day=2))
    assert rec["time_hour"] == at(11, day=2) and rec["temp"] is not None


def test_the_server_state_refreshes_its_index_when_a_new_batch_lands(tmp_path):
    project = flights_project(tmp_path / "p")
    state = ServerState(project.spec, project.ws)
    state.refresh_lookups()
    assert state.lookups.versions == {"weather": 0}
    rec = {"origin": "EWR", "time_hour": datetime(2013, 2, 1, 8, tzinfo=UTC)}
    state.lookups.lookup([rec])
    assert rec["temp"] is None  # the newest January reading is over 3 h old
    newer = tmp_path / "weather_feb.csv"
    newer.write_text("time_hour,origin,temp,visib\n2013-02-01T06:00:00Z,EWR,-40,0.5\n")
    assert project.ingest_lookup("weather", newer)[0].lookup_version == 1
    state.refresh_lookups()
    assert state.lookups.versions == {"weather": 1}
    state.lookups.lookup([rec])
    assert (rec["temp"], rec["visib"], rec["wind_speed"]) == (-40.0, 0.5, None)
    project.close()


def test_server_joins_weather_for_flights_that_carry_none(tmp_path):
    project = flights_project(tmp_path / "p")
    project.train()
    project.promote("latest", force=True)
    server = Server(project.spec_path, free_port())
    try:
        flights = pl.read_csv(FLIGHTS).slice(2000, 20)
        body = [{k: r[k] for k in REQUEST_FIELDS} for r in flights.iter_rows(named=True)]
        assert not set(WEATHER_FEATURES) & set(body[0])
        r = httpx.post(server.url + "/v1/predict", json=body)
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 20
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["lookup_versions"] == {"weather": 0}
        missing_key = httpx.post(server.url + "/v1/predict", json={k: v for k, v in body[0].items() if k != "origin"})
        assert missing_key.status_code == 422 and "body.origin" in missing_key.text
        # a newer reading lands while the server runs; a later flight gets it within the reload interval
        newer = tmp_path / "weather_feb.csv"
        newer.write_text("time_hour,origin,temp,visib\n2013-02-01T06:00:00Z,EWR,-40,0.5\n")
        project.ingest_lookup("weather", newer)
        late = dict(body[0], origin="EWR", time_hour="2013-02-01T08:00:00Z")
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/readyz").json()["lookup_versions"] != {"weather": 1}:
            assert time.monotonic() < deadline, "the server did not pick up the new lookup version"
            time.sleep(0.1)
        assert httpx.post(server.url + "/v1/predict", json=late).status_code == 200
    finally:
        assert server.stop() in (0, -15)
    log = pl.from_arrow(project.ws.lake.read("predictions")).sort("_ts", maintain_order=True)
    assert log.height == 21
    expected = join_lookups(project.ws.lake.read("events").slice(2000, 20), project.spec, project.ws.lake,
                            {"weather": 0})
    logged = log.head(20).select(WEATHER_FEATURES).to_dicts()
    assert logged == expected.select(WEATHER_FEATURES).to_pylist()
    assert log["time_hour"].head(20).to_list() == expected.column("time_hour").to_pylist()
    assert log.row(20, named=True)["temp"] == -40.0 and log.row(20, named=True)["origin"] == "EWR"
    project.close()
