"""The real `tidal` command, run as a subprocess in a temporary folder: the whole loop and its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CHURN_SPEC, TELCO

TIDAL = Path(sys.executable).with_name("tidal")


def run(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [str(TIDAL)] if TIDAL.exists() else [sys.executable, "-m", "tidal.cli"]
    env = {k: v for k, v in os.environ.items() if k != "TIDAL_SPEC"}
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(result: subprocess.CompletedProcess) -> list[str]:
    """Exit code 1, exactly one 'error:' line, no traceback; returns stderr's lines."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    return lines


@pytest.fixture
def folder(tmp_path) -> Path:
    shutil.copy(TELCO, tmp_path / "data.csv")
    return tmp_path


@pytest.fixture
def small_folder(tmp_path) -> Path:
    """The first 300 rows of the sample, for commands whose speed does not depend on the data."""
    lines = TELCO.read_text().splitlines(keepends=True)[:301]
    (tmp_path / "data.csv").write_text("".join(lines))
    return tmp_path


def write_spec(folder: Path, **changes) -> Path:
    data = {**CHURN_SPEC, "sources": [{"kind": "file", "path": "data.csv"}],
            "training": {"num_boost_round": 30}, **changes}
    path = folder / "tidal.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_whole_loop(folder):
    # init drafts a spec from the data
    r = run(folder, "init", str(folder / "data.csv"), "--target", "Churn")
    assert r.returncode == 0, r.stderr
    assert "wrote tidal.yaml: 19 features, 1 excluded" in r.stdout
    drafted = yaml.safe_load((folder / "tidal.yaml").read_text())
    assert drafted["task"] == "binary" and drafted["positive_class"] == "Yes"
    assert drafted["entity_key"] == "customerID"
    drafted["training"] = {"num_boost_round": 30}
    (folder / "tidal.yaml").write_text(yaml.safe_dump(drafted, sort_keys=False))

    # spec show fills every default in
    r = run(folder, "spec", "show")
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown["training"]["num_boost_round"] == 30
    from tidal.spec import Training

    assert shown["training"]["early_stopping_rounds"] == Training().early_stopping_rounds  # a default, filled in
    assert shown["guardrails"]["p99_latency_ms"] == 50.0
    assert shown["monitoring"]["window"] == 1000
    assert shown["features"]["tenure"]["max"] is None
    assert shown["workspace"]["path"] == ".tidal"

    # ingest the spec's sources, then again: a no-op
    r = run(folder, "ingest", "--json")
    assert r.returncode == 0, r.stderr
    (report,) = json.loads(r.stdout)
    assert (report["rows_total"], report["rows_accepted"], report["rows_quarantined"]) == (7043, 7043, 0)
    assert report["already_ingested"] is False and report["events_version"] == 0
    r = run(folder, "ingest")
    assert r.returncode == 0, r.stderr
    assert "already ingested" in r.stdout
    assert (folder / ".tidal" / "lake" / "events" / "_delta_log").is_dir()

    # train registers version 1 as a candidate
    r = run(folder, "train", "--json")
    assert r.returncode == 0, r.stderr
    trained = json.loads(r.stdout)
    assert trained["version"] == 1
    auc = trained["metrics"]["test"]["auc"]
    assert 0.75 < auc < 1.0

    # evaluate rebuilds the same held-out rows and gets the same figures
    r = run(folder, "evaluate", "latest")
    assert r.returncode == 0, r.stderr
    rows = trained["metrics"]["test"]["rows"]
    assert f"model version 1 on {rows} held-out rows" in r.stdout
    assert f"auc        {auc:.4f}" in r.stdout
    assert "cost per prediction at the cost-optimal threshold" in r.stdout

    # promote and list
    r = run(folder, "promote", "latest")
    assert r.returncode == 0, r.stderr
    assert "model version 1 is now in production" in r.stdout
    r = run(folder, "models")
    assert r.returncode == 0, r.stderr
    (row,) = [line for line in r.stdout.splitlines() if "production" in line]
    assert row.split()[:4] == ["│", "1", "│", "production"]
    assert f"{auc:.4f}" in row
    assert "candidate" not in r.stdout


def test_spec_schema_is_json_schema(folder):
    r = run(folder, "spec", "schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema["title"] == "Spec"
    assert schema["additionalProperties"] is False
    assert {"name", "task", "target", "features"} <= set(schema["required"])
    assert "costs" in schema["properties"] and "Feature" in schema["$defs"]
    assert schema["properties"]["target"]["description"]


@pytest.mark.parametrize("change, field", [
    ({"task": "classify"}, "task"),
    ({"colour": "blue"}, "colour"),
    ({"features": {"tenure": {"type": "numeric", "min": 5, "max": 1}}}, "features.tenure"),
])
def test_malformed_spec_gives_one_clear_error(folder, change, field):
    write_spec(folder, **change)
    lines = assert_clean_failure(run(folder, "spec", "show"))
    assert "1 problem(s) in the spec" in lines[0]
    assert any(line.strip().startswith(f"- {field}:") for line in lines[1:]), lines


def test_invalid_yaml_names_the_line(folder):
    (folder / "tidal.yaml").write_text("name: churn\ntask: binary\n  target: [\n")
    lines = assert_clean_failure(run(folder, "train"))
    assert "not valid YAML at line 3" in lines[0]


def test_missing_spec_says_how_to_fix(folder):
    lines = assert_clean_failure(run(folder, "models"))
    assert "spec file not found" in lines[0]
    assert any("tidal init" in line for line in lines)


def test_promote_unknown_version_exits_1_with_fix(folder):
    write_spec(folder)
    lines = assert_clean_failure(run(folder, "promote", "99"))
    assert "model version 99 does not exist" in lines[0]
    assert any(line.strip().startswith("fix:") and "tidal models" in line for line in lines)


def test_train_before_ingest_is_a_clear_error(folder):
    write_spec(folder)
    lines = assert_clean_failure(run(folder, "train"))
    assert "no accepted data" in lines[0]
    assert any("tidal ingest" in line for line in lines)


def test_init_refuses_to_overwrite_without_force(small_folder):
    spec = small_folder / "tidal.yaml"
    spec.write_text("# my reviewed spec\n")
    lines = assert_clean_failure(run(small_folder, "init", str(small_folder / "data.csv"), "--target", "Churn"))
    assert "already exists" in lines[0]
    assert any("--force" in line for line in lines)
    assert spec.read_text() == "# my reviewed spec\n"
    r = run(small_folder, "init", str(small_folder / "data.csv"), "--target", "Churn", "--force")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(spec.read_text())["target"] == "Churn"


def test_init_unknown_target_lists_columns(small_folder):
    lines = assert_clean_failure(run(small_folder, "init", str(small_folder / "data.csv"), "--target", "nope"))
    assert "'nope'" in lines[0]
    assert any("customerID" in line and "Churn" in line for line in lines)
    assert not (small_folder / "tidal.yaml").exists()


def test_init_with_relative_data_path(small_folder):
    """`tidal init data.csv` (the everyday form) records the source relative to the spec."""
    r = run(small_folder, "init", "data.csv", "--target", "Churn")
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.returncode == 0, r.stderr[-2000:]
    spec = yaml.safe_load((small_folder / "tidal.yaml").read_text())
    assert spec["sources"] == [{"kind": "file", "path": "data.csv"}]
