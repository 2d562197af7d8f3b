"""`tidal ingest --follow` killed with SIGKILL mid-stream, twice: after restarts every message is
in the events table exactly once, no batch is half-visible, and nothing stays unacknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import sqlalchemy as sa
import yaml

from tests.conftest import CHURN_SPEC
from tests.data.sources.conftest import REDIS_URL, telco_messages
from tidal.infra.lake import Lake
from tidal.infra.metadata import MetadataStore, batches

MESSAGES = 2000
BATCH = 50


def start(spec_path: Path, *args: str) -> subprocess.Popen:
    log = open(spec_path.parent / "ingest.log", "a")
    return subprocess.Popen([sys.executable, "-m", "tidal.cli", "ingest", "--spec", str(spec_path), *args],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def kill_when(proc: subprocess.Popen, lake: Lake, version: int, log: Path, timeout: float = 30) -> int:
    """SIGKILL the process as soon as the events table reaches ``version``; the version seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        seen = lake.version("events")
        if seen is not None and seen >= version:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return seen
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("the ingester made no progress: " + log.read_text())


def test_kill9_mid_stream_loses_nothing_and_applies_nothing_twice(redis_stream, tmp_path):
    client, key = redis_stream
    messages = telco_messages(MESSAGES)
    pipe = client.pipeline(transaction=False)
    for m in messages:
        pipe.xadd(key, m)
    pipe.execute()
    spec = {**CHURN_SPEC, "sources": [{"kind": "redis_stream", "url": REDIS_URL, "stream": key,
                                       "batch_size": BATCH, "block_ms": 100}]}
    spec_path = tmp_path / "tidal.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    lake = Lake(tmp_path / ".tidal" / "lake")
    log = tmp_path / "ingest.log"

    first = kill_when(start(spec_path, "--follow"), lake, 3, log)
    second = kill_when(start(spec_path, "--follow"), lake, first + 6, log)
    events = pl.from_arrow(lake.read("events"))
    assert events.height < MESSAGES, "killed too late to test anything; raise MESSAGES"
    assert client.xpending(key, "tidal")["pending"] <= BATCH  # at most the batch in flight
    assert second > first

    # the last restart follows exactly as many batches as remain (the one in flight replays), then stops
    (group,) = client.xinfo_groups(key)
    remaining = -(-group["pending"] // BATCH) + -(-group["lag"] // BATCH)
    done = subprocess.run([sys.executable, "-m", "tidal.cli", "ingest", "--spec", str(spec_path), "--follow",
                           "--max-batches", str(remaining)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"done: {remaining} batches" in done.stderr
    assert len(done.stdout.splitlines()) == remaining

    events = pl.from_arrow(lake.read("events"))
    ids = events["customerID"]
    assert ids.n_unique() == events.height == MESSAGES  # every message exactly once
    assert set(ids.to_list()) == {m["customerID"] for m in messages}
    sizes = events.group_by("_batch_id").len()["len"].to_list()
    assert sorted(sizes)[1:] == [BATCH] * (len(sizes) - 1)  # whole batches only (the last may be short)
    assert client.xpending(key, "tidal")["pending"] == 0
    assert lake.read("quarantine") is None
    store = MetadataStore(f"sqlite:///{tmp_path / '.tidal' / 'metadata.db'}")
    recorded = [r["batch_id"] for r in store.select(sa.select(batches.c.batch_id))]
    store.close()
    assert sorted(recorded) == sorted(events["_batch_id"].unique().to_list())  # one metadata row per batch
