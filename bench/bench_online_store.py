"""Online feature store lookups: tidal's in-process and Redis stores beside Feast's SQLite and Redis online stores.

The issue's targets, 50 features per entity: one-entity lookup p99 <= 50 µs in process and
<= 0.3 ms through Redis; 100 entities p99 <= 5 ms.

Data: 100,000 entities ("c000000"...) x 50 float64 features drawn from N(0, 1), one event
time each, written to one Parquet file. Every store loads that file: tidal's stores read it
with PyArrow and ``write_many`` the rows; Feast materializes it (a FeatureView over a
FileSource, provider local, a file registry). Both load times are reported.

Lookups: the same seeded random entity sequences for every store: 2,200 one-entity gets and
2,200 gets of 100 entities; the first 200 of each warm up, the other 2,000 are timed one
call at a time with ``time.perf_counter_ns``. A tidal lookup returns each entity's features
as a mapping; a Feast lookup is ``get_online_features(features=[50 refs],
entity_rows=[...]).to_dict()``, the call a Feast user makes.

Feast 0.67 pins pandas<3, redis<8 and prometheus-client<0.25, older than tidal's, so it lives
in its own venv, ``.venv-feast`` (created by this script on first use from
``bench/requirements-feast.txt``); its half runs there as a subprocess
(``bench/feast_online_store.py``) that prints its figures as JSON. Every store is loaded and
timed alone, one after the other. Redis is the local server (127.0.0.1:6379): without it the Redis rows are skipped.
Only this run's keys are deleted afterwards (tidal's namespace; Feast's project's keys via
``teardown``). The machine is shared: the load average is printed beside the figures.

Run: ``.venv/bin/python bench/bench_online_store.py`` (7 to 9 minutes on a shared 2-core
machine, most of it Feast: materializing 5M values, and 2,000 lookups of 100 entities per store
at 45-80 ms each). ``--feast-lookups N``
times fewer Feast lookups for a quick look (tidal's stay at 2,000).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from feast_online_store import PROJECT_PREFIX, WARMUP, measure, summary  # noqa: E402  (bench/ is on sys.path)
from tidal.features.store import InProcessStore, RedisStore  # noqa: E402

N_ENTITIES = 100_000
N_FEATURES = 50
BATCH = 100
TIMED = 2_000
SEED = 11
REDIS_URL = "redis://127.0.0.1:6379/0"
FEAST_REDIS = "127.0.0.1:6379,db=0"
FEAST_VENV = ROOT / ".venv-feast"
FEAST_REQUIREMENTS = HERE / "requirements-feast.txt"
FEATURES = [f"f{j:02d}" for j in range(N_FEATURES)]
TARGET_ONE_US = {"tidal in-process": 50.0, "tidal Redis": 300.0}
TARGET_MANY_US = 5_000.0


def make_data(folder: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The Parquet file every store loads, and the lookup sequences every store answers."""
    rng = np.random.default_rng(SEED)
    ids = [f"c{i:06d}" for i in range(N_ENTITIES)]
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    times = [start + timedelta(seconds=int(s)) for s in rng.integers(0, 30 * 86_400, N_ENTITIES)]
    values = rng.normal(size=(N_ENTITIES, N_FEATURES))
    table = pa.table({"customer_id": ids, "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
                      **{f: values[:, j] for j, f in enumerate(FEATURES)}})
    parquet = folder / "history.parquet"
    pq.write_table(table, parquet)
    lookups = {"features": FEATURES,
               "one": [ids[i] for i in rng.integers(0, N_ENTITIES, WARMUP + TIMED)],
               "many": [[ids[i] for i in rng.integers(0, N_ENTITIES, BATCH)] for _ in range(WARMUP + TIMED)]}
    path = folder / "lookups.json"
    path.write_text(json.dumps(lookups))
    return parquet, path, lookups


def load_tidal(store, parquet: Path) -> float:
    """Seconds to read the Parquet file and write every entity's values into ``store``."""
    start = time.perf_counter()
    table = pq.read_table(parquet)
    ids = table["customer_id"].to_pylist()
    columns = [table[f].to_pylist() for f in FEATURES]
    rows = {e: dict(zip(FEATURES, values)) for e, values in zip(ids, zip(*columns))}
    store.write_many(rows, dict(zip(ids, table["event_timestamp"].to_pylist())))
    return time.perf_counter() - start


def bench_tidal(name: str, store, parquet: Path, lookups: dict[str, Any]) -> dict[str, Any]:
    print(f"{name}: loading {N_ENTITIES:,} entities ...", flush=True)
    load_s = load_tidal(store, parquet)
    first = store.get(lookups["one"][0])
    result = {"load_s": load_s, "one": summary(measure(store.get, lookups["one"])),
              "many": summary(measure(store.get_many, lookups["many"])),
              "check": {f: first[f] for f in FEATURES[:3]}}
    print(f"{name}: done", flush=True)
    return result


def redis_available() -> str | None:
    """None when the local Redis answers, else why not."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return str(exc)
    return None


def delete_feast_keys() -> None:
    """Delete the keys Feast wrote for this bench's projects (their names end with the project)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"*{PROJECT_PREFIX}redis_*".encode(), count=1000))
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i:i + 1000])
    client.close()


def feast_python() -> Path:
    """Feast's venv interpreter, creating the venv (or updating it to the requirements) first if needed."""
    python = FEAST_VENV / "bin" / "python"
    stamp = FEAST_VENV / ".tidal-requirements"
    wanted = FEAST_REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"Feast: creating its venv {FEAST_VENV.relative_to(ROOT)} from bench/{FEAST_REQUIREMENTS.name} "
          "(first run only; a minute or two) ...", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FEAST_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(FEAST_REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return python


def bench_feast(kinds: list[str], parquet: Path, lookups_path: Path, folder: Path) -> dict[str, Any]:
    """Feast's half, in its venv: each online store materialized, then timed, one after the other."""
    python = feast_python()
    log_path = folder / "feast.log"
    command = [str(python), str(HERE / "feast_online_store.py"), str(parquet), str(lookups_path),
               "--stores", *kinds, "--redis", FEAST_REDIS]
    print(f"Feast ({', '.join(kinds)}): materializing {N_ENTITIES:,} entities x {N_FEATURES} features, "
          "then timing ...", flush=True)
    with open(log_path, "w") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True) as proc:
        try:
            result: dict[str, Any] = {}
            for line in proc.stdout:
                event = json.loads(line)
                if event["event"] == "materialized":
                    print(f"Feast {event['store']}: materialized in {event['materialize_s']:.1f} s", flush=True)
                elif event["event"] == "result":
                    result = event
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if "redis" in kinds:
                delete_feast_keys()  # what Feast's teardown left, if it did not run
    if proc.returncode or not result:
        raise RuntimeError(f"the Feast process failed (exit {proc.returncode}):\n{log_path.read_text()[-3000:]}")
    return result


def _ms(us: float) -> str:
    return f"{us:,.3f}" if us < 10 else f"{us:,.1f}" if us < 10_000 else f"{us:,.0f}"


def report(rows: dict[str, dict[str, Any]], feast_version: str | None) -> bool:
    """Print the table, the ratios and the targets; True when every target measured was met."""
    print(f"\n{N_ENTITIES:,} entities x {N_FEATURES} float features; lookups timed one call at a time after "
          f"{WARMUP} warm-up calls; times in µs" + (f"; Feast {feast_version}" if feast_version else ""))
    print("load: tidal reads the Parquet file and write_many()s every entity; Feast materialize()s the same file. "
          "A Feast lookup is get_online_features(...).to_dict().")
    header = ["store", "load (s)", "1 entity p50", "1 entity p99", f"{BATCH} entities p50", f"{BATCH} entities p99",
              "timed (1 / 100)"]
    lines = [header]
    for name, r in rows.items():
        load = r.get("load_s", r.get("materialize_s"))
        lines.append([name, f"{load:.1f}", _ms(r["one"]["p50_us"]), _ms(r["one"]["p99_us"]),
                      _ms(r["many"]["p50_us"]), _ms(r["many"]["p99_us"]), f"{r['one']['n']} / {r['many']['n']}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))

    print("\np99 ratios (Feast / tidal: how many times faster tidal is)")
    pairs = [("tidal in-process", "Feast SQLite"), ("tidal in-process", "Feast Redis"), ("tidal Redis", "Feast Redis"),
             ("tidal Redis", "Feast SQLite")]
    for ours, theirs in pairs:
        if ours in rows and theirs in rows:
            one = rows[theirs]["one"]["p99_us"] / rows[ours]["one"]["p99_us"]
            many = rows[theirs]["many"]["p99_us"] / rows[ours]["many"]["p99_us"]
            print(f"  {ours} vs {theirs}: 1 entity {one:,.1f}x, {BATCH} entities {many:,.1f}x")

    print("\ntargets (p99)")
    met = True
    for name in TARGET_ONE_US:
        if name not in rows:
            continue
        for what, got, limit in (("1 entity", rows[name]["one"]["p99_us"], TARGET_ONE_US[name]),
                                 (f"{BATCH} entities", rows[name]["many"]["p99_us"], TARGET_MANY_US)):
            ok = got <= limit
            met &= ok
            print(f"  {name}, {what}: {_ms(got)} µs <= {_ms(limit)} µs: {'met' if ok else 'MISSED'}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feast-lookups", type=int, default=TIMED,
                        help=f"timed Feast lookups of each kind (default {TIMED}; fewer for a quick look)")
    parser.add_argument("--no-feast", action="store_true", help="measure tidal's stores only")
    args = parser.parse_args()
    began = time.perf_counter()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    rows: dict[str, dict[str, Any]] = {}
    feast: dict[str, Any] = {}
    failed = False
    no_redis = redis_available()
    if no_redis:
        print(f"Redis not reachable at {REDIS_URL} ({no_redis}): skipping the Redis rows")
    with tempfile.TemporaryDirectory(prefix="tidal-bench-online-") as tmp:
        folder = Path(tmp)
        parquet, lookups_path, lookups = make_data(folder)

        memory = InProcessStore(feature_names=FEATURES)
        rows["tidal in-process"] = bench_tidal("tidal in-process", memory, parquet, lookups)
        del memory
        gc.collect()
        if not no_redis:
            shared = RedisStore(feature_names=FEATURES, namespace=f"bench-{uuid.uuid4().hex[:10]}", url=REDIS_URL)
            try:
                rows["tidal Redis"] = bench_tidal("tidal Redis", shared, parquet, lookups)
            finally:
                shared.clear()  # this run's namespace only
                shared.close()

        if not args.no_feast:
            if args.feast_lookups < TIMED:
                lookups = {**lookups, "one": lookups["one"][:WARMUP + args.feast_lookups],
                           "many": lookups["many"][:WARMUP + args.feast_lookups]}
                lookups_path = folder / "feast-lookups.json"
                lookups_path.write_text(json.dumps(lookups))
            kinds = ["sqlite"] + ([] if no_redis else ["redis"])
            try:
                feast = bench_feast(kinds, parquet, lookups_path, folder)
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                print(f"Feast could not be measured: {exc}")
                failed = True
            for kind, name in (("sqlite", "Feast SQLite"), ("redis", "Feast Redis")):
                if kind in feast:
                    rows[name] = feast[kind]

    checks = {name: r["check"] for name, r in rows.items()}
    agree = all(np.allclose(list(c.values()), list(next(iter(checks.values())).values())) for c in checks.values())
    print(f"\nsame values from every store for the first entity looked up: {'yes' if agree else 'NO'}")
    report(rows, feast.get("feast_version"))
    load = os.getloadavg()
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in load)}; whole run {time.perf_counter() - began:.0f} s")
    if load[1] > (os.cpu_count() or 1):
        print(f"note: the machine was busy (load {load[1]:.1f} on {os.cpu_count()} cores over the last 5 minutes): "
              "the p99s include waits for a CPU; run again on a quiet machine for the stores' own tails")
    return 1 if failed or not agree else 0


if __name__ == "__main__":
    sys.exit(main())
