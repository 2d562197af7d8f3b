"""A trained, promoted churn workspace and a real tidal server in a subprocess on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
import yaml

from tests.conftest import CHURN_SPEC, TELCO
from tidal.project import Project


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def telco_records(n: int, offset: int = 0, *, extra: tuple[str, ...] = ()) -> list[dict]:
    """``n`` typed Telco rows from ``offset``: the spec's features, plus the ``extra`` columns as text."""
    df = pl.read_csv(TELCO, infer_schema=False).slice(offset, n)
    out = []
    for row in df.iter_rows(named=True):
        rec = {k: row[k] for k in (*extra, *CHURN_SPEC["features"])}
        rec["SeniorCitizen"] = row["SeniorCitizen"] == "1"
        rec["tenure"] = float(row["tenure"])
        rec["MonthlyCharges"] = float(row["MonthlyCharges"])
        rec["TotalCharges"] = float(row["TotalCharges"]) if row["TotalCharges"].strip() else None
        out.append(rec)
    return out


def make_project(root: Path, *, promote: bool = True, versions: int = 1, force: bool = False,
                 **overrides) -> Project:
    spec = dict(CHURN_SPEC, training={"num_boost_round": 40}, **overrides)
    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / "tidal.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    project = Project.open(spec_path)
    project.ingest(TELCO)
    for _ in range(versions):
        project.train()
    if promote:
        project.promote(1, force=force)
    return project


class Server:
    def __init__(self, spec_path: Path, port: int) -> None:
        self.spec_path, self.port = spec_path, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = spec_path.parent / f"server-{port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidal.cli", "serve", "--spec", str(spec_path), "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start: " + self.log.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(project, server) with two trained versions, version 1 in production."""
    root = tmp_path_factory.mktemp("served")
    project = make_project(root, versions=2)
    server = Server(project.spec_path, free_port())
    yield project, server
    server.stop()
    project.close()
    shutil.rmtree(root, ignore_errors=True)
