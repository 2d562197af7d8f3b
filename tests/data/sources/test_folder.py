"""The folder source: new files are picked up once; files still being written are left alone."""

from __future__ import annotations

import shutil

import polars as pl

from tests.conftest import CHURN_SPEC, TELCO
from tidal.data.ingester import ingest_once, open_sources
from tidal.infra.workspace import Workspace
from tidal.spec import parse_spec

LINES = TELCO.read_text().splitlines(keepends=True)


def write(path, start: int, stop: int) -> None:
    path.write_text(LINES[0] + "".join(LINES[1 + start:1 + stop]))


def customer_ids(ws: Workspace) -> list[str]:
    return pl.from_arrow(ws.lake.read("events", columns=["customerID"]))["customerID"].to_list()


def test_new_files_are_ingested_once_and_partial_ones_are_ignored(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    spec = parse_spec({**CHURN_SPEC, "sources": [{"kind": "folder", "path": "inbox", "pattern": "*"}]})
    root = tmp_path / "ws"
    ws = Workspace(root).create()
    (source,) = open_sources(spec, tmp_path)  # the path is relative to the spec's folder

    write(inbox / "a.csv", 0, 40)
    write(inbox / "b.csv.tmp", 40, 70)
    write(inbox / "c.csv.part", 70, 90)
    write(inbox / ".d.csv", 90, 100)
    (report,) = ingest_once(ws, spec, [source])
    assert report.rows_accepted == 40 and report.source == "folder:inbox"
    assert ingest_once(ws, spec, [source]) == []  # the same file is not read again

    (inbox / "b.csv.tmp").rename(inbox / "b.csv")  # the writer finished
    shutil.copy(inbox / "a.csv", inbox / "a-copy.csv")  # the same content under another name
    reports = ingest_once(ws, spec, [source])
    assert [(r.rows_total, r.already_ingested) for r in reports] == [(40, True), (30, False)]
    ws.close()

    ws = Workspace(root).create()  # a restart: the saved state remembers every file taken
    (source,) = open_sources(spec, tmp_path)
    assert ingest_once(ws, spec, [source]) == []
    write(inbox / "e.csv", 100, 110)
    (report,) = ingest_once(ws, spec, [source])
    assert report.rows_accepted == 10
    ids = customer_ids(ws)
    assert len(ids) == len(set(ids)) == 80
    assert set(ws.store.source_state("folder:inbox")["files"]) == {"a.csv", "a-copy.csv", "b.csv", "e.csv"}
    ws.close()


def test_follow_picks_up_new_files_and_stops_cleanly_on_ctrl_c(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import threading

    import yaml

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write(inbox / "a.csv", 0, 20)
    spec = {**CHURN_SPEC, "sources": [{"kind": "folder", "name": "inbox", "path": "inbox"}]}
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "tidal.cli", "ingest", "--spec", str(tmp_path / "tidal.yaml")]

    bad = subprocess.run([*cmd, "--source", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "no source named 'nope'" in bad.stderr and "inbox" in bad.stderr
    assert "Traceback" not in bad.stderr

    proc = subprocess.Popen([*cmd, "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    watchdog = threading.Timer(60, proc.kill)  # a hung ingester fails the test instead of hanging it
    watchdog.start()
    assert "inbox: batch" in proc.stdout.readline()  # the file already there
    write(inbox / "b.csv.part", 20, 30)
    (inbox / "b.csv.part").rename(inbox / "b.csv")
    line = proc.stdout.readline()  # the new file, found while following
    assert "10 accepted" in line and "total 30 accepted" in line and "in 2 batches" in line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    watchdog.cancel()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped: 2 batches, 30 rows accepted" in err
    ws = Workspace(tmp_path / ".tidal")
    assert sorted(ws.store.source_state("inbox")["files"]) == ["a.csv", "b.csv"]
    assert len(customer_ids(ws)) == 30
    ws.close()
