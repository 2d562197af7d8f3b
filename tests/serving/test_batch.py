"""Batch scoring: CSV, Parquet and Delta inputs score exactly as the online predictor does, in any chunking,
and the output appears whole or not at all."""

from __future__ import annotations

import os
import shutil

import numpy as np
import polars as pl
import pytest

from tests.cli.test_cli import assert_clean_failure, run
from tests.conftest import TELCO
from tests.serving.conftest import make_project, telco_records
from tidal.errors import DataValidationError, StateError, TidalError
from tidal.serving import compiled
from tidal.serving.batch_io import rechunk
from tidal.serving.predictor import Predictor

N = 600  # rows scored in most tests


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(project, predictor of the production version, folder holding the first N Telco rows as CSV/Parquet/Delta)."""
    from deltalake import write_deltalake

    root = tmp_path_factory.mktemp("batch")
    project = make_project(root / "project")
    row, bundle = project.registry.load("production")
    data = root / "data"
    data.mkdir()
    lines = TELCO.read_text().splitlines(keepends=True)[:N + 1]
    (data / "telco.csv").write_text("".join(lines))
    typed = pl.read_csv(data / "telco.csv")  # Parquet and Delta with their own column types (ints, floats, text)
    typed.write_parquet(data / "telco.parquet")
    write_deltalake(str(data / "telco_delta"), typed.to_arrow())
    yield project, Predictor(version=row["version"], bundle=bundle), data
    project.close()
    shutil.rmtree(root, ignore_errors=True)


def _online(predictor: Predictor, n: int = N) -> tuple[list, np.ndarray, list]:
    scores = predictor.scores(telco_records(n))
    preds, probs, decisions = predictor.outputs(scores)
    return preds, np.array(probs), decisions


@pytest.mark.parametrize("source", ["telco.csv", "telco.parquet", "telco_delta"])
def test_inputs_score_as_the_online_predictor(scored, tmp_path, source):
    project, predictor, data = scored
    out = tmp_path / "out.parquet"
    report = project.score(data / source, out, engine="native")
    assert report.rows == N and report.model_version == predictor.version
    assert report.engines == {"native": N} and report.invalid_values == {}
    got = pl.read_parquet(out)
    assert got.columns == ["customerID", "prediction", "probability", "decision", "model_version"]
    ids = pl.read_csv(TELCO, infer_schema=False)["customerID"].head(N).to_list()
    if source == "telco_delta":  # a Delta table keeps its rows in its own order, which the output follows
        from deltalake import DeltaTable

        stored = DeltaTable(str(data / source)).to_pyarrow_table()["customerID"].to_pylist()
        assert got["customerID"].to_list() == stored
        got = got.join(pl.DataFrame({"customerID": ids}).with_row_index(), on="customerID").sort("index")
    assert got["customerID"].to_list() == ids  # one output row per input row, in input order
    preds, probs, decisions = _online(predictor)
    np.testing.assert_allclose(got["probability"].to_numpy(), probs, rtol=0, atol=1e-12)
    assert got["prediction"].to_list() == preds
    assert got["decision"].to_list() == decisions
    assert set(got["model_version"].to_list()) == {predictor.version}


def test_chunking_does_not_change_results(scored, tmp_path):
    project, _, data = scored
    small, big = tmp_path / "small.parquet", tmp_path / "big.parquet"
    calls = []
    project.score(data / "telco.csv", small, chunk_rows=7, engine="native",
                  progress=lambda done, total: calls.append((done, total)))
    project.score(data / "telco.csv", big, chunk_rows=1_000_000, engine="native")
    assert pl.read_parquet(small).equals(pl.read_parquet(big))
    assert [c[0] for c in calls] == [*range(7, N, 7), N]  # one call per chunk, rows done so far
    assert all(total is None for _, total in calls)  # a CSV's length is not known in advance


def test_parquet_progress_knows_the_total(scored, tmp_path):
    project, _, data = scored
    calls = []
    project.score(data / "telco.parquet", tmp_path / "o.parquet", chunk_rows=250, engine="native",
                  progress=lambda done, total: calls.append((done, total)))
    assert calls == [(250, N), (500, N), (600, N)]


def test_csv_output_matches_parquet_output(scored, tmp_path):
    project, _, data = scored
    project.score(data / "telco.parquet", tmp_path / "o.csv", engine="native")
    project.score(data / "telco.parquet", tmp_path / "o.parquet", engine="native")
    as_csv = pl.read_csv(tmp_path / "o.csv", schema_overrides={"customerID": pl.String})
    as_parquet = pl.read_parquet(tmp_path / "o.parquet")
    assert as_csv.columns == as_parquet.columns
    assert as_csv["decision"].to_list() == as_parquet["decision"].to_list()
    np.testing.assert_allclose(as_csv["probability"].to_numpy(), as_parquet["probability"].to_numpy(), rtol=1e-15)


def test_untypable_values_are_scored_as_missing_and_counted(scored, tmp_path):
    project, predictor, data = scored
    frame = pl.read_csv(data / "telco.csv", infer_schema=False)
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("abc")).otherwise(pl.col("tenure"))
                               .alias("tenure"))
    frame.write_csv(tmp_path / "bad.csv")
    report = project.score(tmp_path / "bad.csv", tmp_path / "o.parquet", engine="native")
    assert report.invalid_values == {"tenure": 1} and report.missing_required == {"tenure": 1}
    records = telco_records(N)
    records[3]["tenure"] = None
    expected = predictor.scores(records)
    np.testing.assert_allclose(pl.read_parquet(tmp_path / "o.parquet")["probability"].to_numpy(), expected,
                               rtol=0, atol=1e-12)
    with pytest.raises(DataValidationError, match="strict") as info:
        project.score(tmp_path / "bad.csv", tmp_path / "strict.parquet", strict=True)
    assert "tenure" in str(info.value)
    assert not (tmp_path / "strict.parquet").exists()


def test_output_is_written_atomically(scored, tmp_path):
    project, _, data = scored
    out = tmp_path / "out.parquet"
    out.write_bytes(b"the previous output")

    def fail_after_first_chunk(done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        project.score(data / "telco.csv", out, chunk_rows=100, progress=fail_after_first_chunk, engine="native")
    assert out.read_bytes() == b"the previous output"  # untouched: no half-written output replaced it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]  # and no temporary file is left
    # a killed run leaves its temporary file (no cleanup runs on SIGKILL): the next run removes it
    (tmp_path / ".out.parquet.99999999.tmp").write_bytes(b"half")
    (tmp_path / f".out.parquet.{os.getppid()}.tmp").write_bytes(b"a live process's")
    project.score(data / "telco.csv", out, engine="native")
    assert pl.read_parquet(out).height == N
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.parquet.{os.getppid()}.tmp", "out.parquet"]


@pytest.mark.parametrize("make_input, message", [
    (lambda d: d / "missing.csv", "input not found"),
    (lambda d: d / "notes.txt", "unsupported input"),
    (lambda d: d, "cannot read"),  # a folder that is not a Delta table
])
def test_bad_inputs_are_clear_errors(scored, tmp_path, make_input, message):
    project, _, _ = scored
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TidalError, match=message):
        project.score(make_input(tmp_path), tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_bad_outputs_and_missing_columns_are_clear_errors(scored, tmp_path):
    project, _, data = scored
    with pytest.raises(DataValidationError, match="unsupported output"):
        project.score(data / "telco.csv", tmp_path / "out.json")
    pl.read_csv(data / "telco.csv", infer_schema=False).drop("tenure").write_csv(tmp_path / "no_tenure.csv")
    with pytest.raises(DataValidationError, match="required column") as info:
        project.score(tmp_path / "no_tenure.csv", tmp_path / "out.parquet")
    assert [p.location for p in info.value.problems] == ["tenure"]
    with pytest.raises(DataValidationError, match="is the input"):
        project.score(data / "telco.csv", data / "telco.csv")


def test_nullable_feature_absent_from_input_is_scored_as_missing(scored, tmp_path):
    project, predictor, data = scored
    pl.read_csv(data / "telco.csv", infer_schema=False).drop("TotalCharges").write_csv(tmp_path / "in.csv")
    project.score(tmp_path / "in.csv", tmp_path / "o.parquet", engine="native")
    records = [{**r, "TotalCharges": None} for r in telco_records(N)]
    np.testing.assert_allclose(pl.read_parquet(tmp_path / "o.parquet")["probability"].to_numpy(),
                               predictor.scores(records), rtol=0, atol=1e-12)


def test_empty_input_gives_an_empty_output_with_the_columns(scored, tmp_path):
    project, _, _ = scored
    (tmp_path / "empty.csv").write_text(TELCO.read_text().splitlines(keepends=True)[0])
    report = project.score(tmp_path / "empty.csv", tmp_path / "o.parquet")
    assert report.rows == 0
    out = pl.read_parquet(tmp_path / "o.parquet")
    assert out.height == 0 and out.columns == ["customerID", "prediction", "probability", "decision", "model_version"]


@pytest.mark.skipif(not compiled.available(), reason="lleaves is not installed (pip install 'tidal[fast]')")
def test_compiled_engine_agrees_with_lightgbm(scored, tmp_path):
    project, predictor, data = scored
    report = project.score(data / "telco.parquet", tmp_path / "c.parquet", engine="compiled")
    assert report.engines == {"compiled": N}
    assert report.compiled_parity is not None and report.compiled_parity <= compiled.PARITY_TOLERANCE
    _, probs, decisions = _online(predictor)
    got = pl.read_parquet(tmp_path / "c.parquet")
    np.testing.assert_allclose(got["probability"].to_numpy(), probs, rtol=0, atol=1e-9)
    assert got["decision"].to_list() == decisions


def test_compiled_engine_that_disagrees_is_refused(scored, tmp_path, monkeypatch):
    project, _, data = scored
    monkeypatch.setattr(compiled, "available", lambda: True)
    monkeypatch.setattr(compiled, "compile_booster", lambda booster, **kw: lambda X: booster.predict(X) + 1e-3)
    with pytest.raises(StateError, match="differs from LightGBM"):
        project.score(data / "telco.csv", tmp_path / "o.parquet", engine="compiled")
    # auto falls back to LightGBM and says so
    monkeypatch.setattr("tidal.serving.batch.COMPILE_MIN_ROWS", 1)
    report = project.score(data / "telco.parquet", tmp_path / "o.parquet", engine="auto")
    assert report.engines == {"native": N} and "scored natively" in report.notes[0]


def test_rechunk_gives_exact_sizes():
    frames = [pl.DataFrame({"a": list(range(i, i + n))}) for i, n in ((0, 3), (3, 0), (3, 10), (13, 1))]
    sizes = [f.height for f in rechunk(iter(frames), 4)]
    assert sizes == [4, 4, 4, 2]
    assert pl.concat(list(rechunk(iter(frames), 4)))["a"].to_list() == list(range(14))


def test_cli_score_prints_rows_and_speed(scored, tmp_path):
    project, _, data = scored
    result = run(project.spec_path.parent, "score", str(data / "telco.csv"), "-o", str(tmp_path / "o.csv"))
    assert result.returncode == 0, result.stderr
    assert f"scored {N} rows with model version" in result.stdout and "rows/s" in result.stdout
    assert pl.read_csv(tmp_path / "o.csv").height == N
    failure = run(project.spec_path.parent, "score", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "x.csv"))
    assert "input not found" in assert_clean_failure(failure)[0]


def test_lookups_are_joined_as_in_training(tmp_path):
    """The NYC flights example: each flight gets its airport's weather as of its scheduled hour, as in training."""
    import yaml

    from tidal.project import Project
    from tidal.serving.batch import score_file
    from tidal.training.dataset import training_table

    example = TELCO.parents[1] / "flights"
    spec = yaml.safe_load((example / "tidal.yaml").read_text())
    spec["training"] = {"num_boost_round": 30}
    for name in ("flights_2013_01.csv", "weather_2013_01.csv"):
        shutil.copy(example / name, tmp_path / name)
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    with Project.open(tmp_path / "tidal.yaml") as project:
        project.ingest_lookup("weather")
        project.ingest(tmp_path / "flights_2013_01.csv")
        result = project.train()
        project.promote(result.version, force=True)
        report = project.score(tmp_path / "flights_2013_01.csv", tmp_path / "o.parquet", chunk_rows=999,
                               engine="native")
        _, bundle = project.registry.load("production")
        table = training_table(project.ws, project.spec, result.data_versions)
        expected = bundle.booster.predict(bundle.pipeline.transform_arrow(table))
        np.testing.assert_allclose(pl.read_parquet(tmp_path / "o.parquet")["probability"].to_numpy(), expected,
                                   rtol=0, atol=1e-12)
        assert report.rows == table.num_rows
        with pytest.raises(StateError, match="lookups"):
            score_file(project.spec, bundle, 1, tmp_path / "flights_2013_01.csv", tmp_path / "x.parquet")


def test_sigterm_during_cli_scoring_runs_the_cleanup():
    """`tidal score` turns SIGTERM into an interrupt, so the temporary output is removed as on Ctrl-C."""
    import signal
    import time

    from tidal.infra.signals import sigterm_raises

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before
