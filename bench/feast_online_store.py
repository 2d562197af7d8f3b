"""The Feast half of bench_online_store.py, run in Feast's own venv (.venv-feast): prints JSON lines.

For each online store asked for (sqlite, redis) it builds a local Feast repo in a temp
folder (provider local, a file registry, an Entity, a FeatureView over the Parquet file the
main script wrote), materializes every entity (timed), then times
``get_online_features(...).to_dict()`` for the same entity sequences as tidal's stores.

Also the timing helpers both halves share (standard library only, so either venv imports them).
Run by bench_online_store.py; by hand: ``.venv-feast/bin/python bench/feast_online_store.py PARQUET LOOKUPS_JSON``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

WARMUP = 200
ENTITY = "customer"
JOIN_KEY = "customer_id"
VIEW = "history"
PROJECT_PREFIX = "tidal_bench_"  # Feast's Redis keys end with the project name


def measure(call: Callable[[Any], Any], args: Sequence[Any], *, warmup: int = WARMUP) -> list[int]:
    """Call ``call(a)`` for each of the first ``warmup`` args untimed, then time each other call in ns."""
    for a in args[:warmup]:
        call(a)
    timings = []
    clock = time.perf_counter_ns
    for a in args[warmup:]:
        start = clock()
        call(a)
        timings.append(clock() - start)
    return timings


def summary(timings: Sequence[int]) -> dict[str, float]:
    """n, p50 and p99 in µs (nearest rank)."""
    ordered = sorted(timings)
    rank = lambda q: ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1000  # noqa: E731
    return {"n": len(ordered), "p50_us": rank(0.50), "p99_us": rank(0.99)}


def _feast_store(kind: str, folder: Path, parquet: Path, features: list[str], redis: str, project: str):
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.types import Float64

    online = ({"type": "sqlite", "path": str(folder / "online.db")} if kind == "sqlite"
              else {"type": "redis", "connection_string": redis})
    config = RepoConfig(project=project, provider="local", registry=str(folder / "registry.db"),
                        online_store=online, offline_store={"type": "file"}, repo_path=folder,
                        entity_key_serialization_version=3)
    store = FeatureStore(config=config)
    entity = Entity(name=ENTITY, join_keys=[JOIN_KEY], value_type=ValueType.STRING)
    view = FeatureView(name=VIEW, entities=[entity], ttl=timedelta(days=3650), online=True,
                       schema=[Field(name=f, dtype=Float64) for f in features],
                       source=FileSource(path=str(parquet.resolve()), timestamp_field="event_timestamp"))
    store.apply([entity, view])
    return store


def run(kind: str, parquet: Path, lookups: dict[str, Any], redis: str, report=None) -> dict[str, Any]:
    """Materialize into Feast's ``kind`` online store, then time the lookups; ``report(event)`` once materialized."""
    features = lookups["features"]
    refs = [f"{VIEW}:{f}" for f in features]
    with tempfile.TemporaryDirectory(prefix=f"feast-{kind}-") as tmp:
        project = f"{PROJECT_PREFIX}{kind}_{int(time.time())}"
        store = _feast_store(kind, Path(tmp), parquet, features, redis, project)
        try:
            start = time.perf_counter()
            store.materialize(datetime(2000, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc))
            materialize_s = time.perf_counter() - start
            if report is not None:
                report({"event": "materialized", "store": kind, "materialize_s": materialize_s})
            first = store.get_online_features(features=refs, entity_rows=[{JOIN_KEY: lookups["one"][0]}]).to_dict()
            check = {f: first[f][0] for f in features[:3]}
            one = measure(lambda e: store.get_online_features(features=refs, entity_rows=[{JOIN_KEY: e}]).to_dict(),
                          lookups["one"])
            many = measure(lambda es: store.get_online_features(
                features=refs, entity_rows=[{JOIN_KEY: e} for e in es]).to_dict(), lookups["many"])
        finally:
            store.teardown()  # drops the online tables; for Redis, this project's keys only
    return {"materialize_s": materialize_s, "one": summary(one), "many": summary(many), "check": check}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parquet", type=Path)
    parser.add_argument("lookups", type=Path, help="JSON: features, one (entity ids), many (lists of entity ids)")
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    parser.add_argument("--redis", default="127.0.0.1:6379,db=0", help="Feast's Redis connection string")
    args = parser.parse_args()
    out, sys.stdout = sys.stdout, sys.stderr  # Feast prints progress: only this script's JSON goes to stdout

    def report(event: dict[str, Any]) -> None:
        print(json.dumps(event), file=out, flush=True)

    import feast

    lookups = json.loads(args.lookups.read_text())
    result: dict[str, Any] = {"event": "result", "feast_version": feast.__version__}
    for kind in args.stores:
        result[kind] = run(kind, args.parquet, lookups, args.redis, report)
    print(json.dumps(result), file=out, flush=True)


if __name__ == "__main__":
    main()
