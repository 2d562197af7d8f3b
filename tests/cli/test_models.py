"""`tidal approve`, `tidal reject`, `tidal models [list|show]` in-process, on a workspace whose spec asks
for approval before production, with two trained versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.serving.conftest import make_project
from tidal import cli
from tidal.errors import ApprovalRequired

ENV = {"NO_COLOR": "1", "COLUMNS": "240", "TIDAL_SPEC": ""}


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """Version 1 approved by ana and in production; version 2 a candidate awaiting approval."""
    project = make_project(tmp_path_factory.mktemp("models"), versions=2, promote=False,
                           registry={"approval_required_for": ["production"]})
    project.approve(1, reason="first release", actor="ana")
    project.promote(1, reason="go live", actor="ana")
    runs = [r["run_id"] for r in project.runs()]
    spec = str(project.spec_path)
    digest = project.spec.digest()
    project.close()
    return spec, runs, digest


def invoke(*args: str):
    return CliRunner().invoke(cli.app, list(args), env=ENV)


def tidal(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_promotion_without_approval_fails_cleanly_naming_the_fix(gated):
    spec, _, _ = gated
    result = invoke("promote", "2", "--force", "--spec", spec)
    assert isinstance(result.exception, ApprovalRequired)
    # the real command: one error line with the fix, exit code 1, no traceback
    done = subprocess.run([sys.executable, "-m", "tidal.cli", "promote", "2", "--force", "--spec", spec],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **ENV})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: model version 2 needs approval before it can go to production")
    assert "fix: run `tidal approve 2 --reason WHY`" in done.stderr
    listed = json.loads(tidal("models", "--json", "--spec", spec))
    assert {r["version"]: r["stage"] for r in listed} == {1: "production", 2: "candidate"}


def test_approve_reject_and_the_models_list(gated):
    spec, _, _ = gated
    out = tidal("reject", "2", "--reason", "calibration is off", "--by", "carol", "--spec", spec)
    assert "model version 2 rejected by carol" in out
    table = tidal("models", "--spec", spec)
    assert tidal("models", "list", "--spec", spec) == table  # `tidal models` still lists
    lines = {line.split()[1]: line for line in table.splitlines() if line.startswith("│ ")
             and line.split()[1].isdigit()}
    assert "approved" in lines["1"] and "rejected" in lines["2"]
    out = tidal("approve", "2", "--reason", "recalibrated", "--by", "dan", "--spec", spec)
    assert out.strip() == "model version 2 approved by dan; it may now be promoted to production"
    result = invoke("approve", "2", "--spec", spec)
    assert result.exit_code != 0 and "--reason" in result.output  # a reason is required


def test_models_show_lineage(gated):
    spec, (run_1, run_2), digest = gated
    tidal("approve", "2", "--reason", "for the lineage test", "--by", "erin", "--spec", spec)
    tidal("promote", "2", "--force", "--reason", "release 2", "--spec", spec)
    lin = json.loads(tidal("models", "show", "2", "--json", "--spec", spec))
    assert lin["version"] == 2 and lin["stage"] == "production" and lin["run_id"] == run_2
    assert lin["data_versions"] == {"events": 0}
    assert lin["spec_sha256"] == digest and lin["code_version"]
    run = json.loads(tidal("runs", "show", run_2, "--json", "--spec", spec))
    assert lin["code_version"] == run["code_version"]
    assert lin["training_rows"]["train"] + lin["training_rows"]["valid"] + lin["training_rows"]["test"] \
        == lin["training_rows"]["total"] == run["metrics"]["data_rows"]
    assert lin["metrics"]["auc"] == pytest.approx(run["metrics"]["test"]["auc"])
    assert len(lin["bundle"]["manifest_sha256"]) == 64
    assert lin["champion"]["version"] == 1 and "--force" in lin["champion"]["compared_by"]
    assert lin["approval"]["status"] == "approved" and lin["approval"]["by"] == "erin"
    history = [(e["event"], e["to_stage"], e["actor"]) for e in lin["history"]]
    assert history[0] == ("stage", "candidate", history[0][2])
    assert ("approved", None, "erin") in history and history[-1][1] == "production"
    assert "guardrails skipped" in lin["history"][-1]["reason"]
    first = json.loads(tidal("models", "--spec", spec, "show", "1", "--json"))  # --spec given to the group
    assert first["run_id"] == run_1 and first["stage"] == "archived"
    assert [e["to_stage"] for e in first["history"] if e["event"] == "stage"] == ["candidate", "production",
                                                                                  "archived"]
    text = tidal("models", "show", "2", "--spec", spec)
    assert "model version 2 (production)" in text and f"run {run_2} (train, finished)" in text
    assert f"spec sha256 {digest}" in text and f"bundle manifest sha256 {lin['bundle']['manifest_sha256']}" in text
    assert "data versions: events 0" in text and "compared with: version 1" in text
    assert "approval: approved by erin" in text and "(needed for production)" in text
    assert "by erin: for the lineage test" in text and "release 2" in text


def test_models_show_unknown_version_is_a_clean_error(gated):
    spec, _, _ = gated
    result = invoke("models", "show", "9", "--spec", spec)
    assert result.exit_code != 0 and "model version 9 does not exist" in str(result.exception)
