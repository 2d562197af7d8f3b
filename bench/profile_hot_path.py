"""Where a 1,000-row POST /v1/predict spends its time, stage by stage, in-process (no socket).

Builds the model of ``bench_serving.py`` (the fraud data, 100 trees of up to 31 leaves on 24
features, trained by tidal) or reuses one (``--workspace DIR`` keeps it for the next run), then
times, in CPU time (``time.process_time``, best of N; the machine is shared), the whole request
through the server's ASGI hot path (body in, response bytes out, validation and prediction log
on) and each stage of it:

- decode + validation: body bytes -> validated records (msgspec; column-wise from 32 records)
- features: ``Predictor.matrix`` (``transform_rows`` over a large request's rows, ``transform_records`` for fewer)
- predict: ``Predictor.predict`` (the compiled model, compiled first unless ``--native``)
- outputs: scores -> prediction, probability and decision (``DecisionRule.lists``)
- ids + prediction log: the prediction ids and the request's rows appended to the log buffer
- response: the answer dicts and the body (orjson)

The request line also holds what no stage shows (the ASGI round, metrics, freeing the
request's objects), so it exceeds the sum of the stages. ``--profile`` adds cProfile's top
functions for the whole request. ``--rows`` sets the request's size (default 1,000; 1 shows
the single-row path). The load average is printed with the figures.

Run: ``.venv/bin/python bench/profile_hot_path.py [--workspace /tmp/tidal-hot] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from bench_serving import DATA, FEATURES, loadavg, train_tidal  # noqa: E402
from tidal.project import Project  # noqa: E402
from tidal.serving.app import create_app  # noqa: E402


def project_in(folder: Path) -> Project:
    """The trained, promoted fraud24 project in ``folder`` (trained there first if absent)."""
    spec_path = folder / "tidal" / "tidal.yaml"
    if spec_path.exists():
        return Project.open(spec_path)
    folder.mkdir(parents=True, exist_ok=True)
    project, *_ = train_tidal(folder)
    return project


def best_ms(fn: Callable[[], Any], *, repeat: int, number: int, setup: Callable[[], Any] | None = None) -> float:
    """Best of ``repeat`` runs of ``number`` calls of ``fn``: CPU ms per call."""
    best = float("inf")
    for _ in range(repeat):
        total = 0.0
        for _ in range(number):
            if setup is not None:
                setup()
            t = time.process_time()
            fn()
            total += time.process_time() - t
        best = min(best, total / number)
    return best * 1e3


def asgi_post(app: Any, body: bytes) -> Callable[[], bytes]:
    """A call that sends ``body`` through the app's hot route and returns the response body."""
    loop = asyncio.new_event_loop()
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": []}
    message = {"type": "http.request", "body": body, "more_body": False}
    sent: list[dict] = []

    async def receive() -> dict:
        return message

    async def send(m: dict) -> None:
        sent.append(m)

    def post() -> bytes:
        sent.clear()
        loop.run_until_complete(app.hot_routes["/v1/predict"](scope, receive, send))
        if sent[0]["status"] != 200:
            raise RuntimeError(sent[1]["body"].decode())
        return sent[1]["body"]

    return post


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="Folder holding (or to hold) the trained project.")
    parser.add_argument("--rows", type=int, default=1000, help="Records in the request.")
    parser.add_argument("--repeat", type=int, default=7, help="Best of this many runs ...")
    parser.add_argument("--number", type=int, default=20, help="... of this many calls each.")
    parser.add_argument("--profile", action="store_true", help="Print cProfile's top functions for the request.")
    parser.add_argument("--native", action="store_true", help="Score with LightGBM only (no compiled model).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidal-hot-path-") as tmp:
        project = project_in(args.workspace or Path(tmp))
        try:
            run(project, args)
        finally:
            project.close()
    return 0


def run(project: Project, args: argparse.Namespace) -> None:
    app = create_app(project.spec, project.ws)
    state = app.state.tidal
    state.load_production()
    predictor = state.predictor
    engine = "LightGBM (Booster.predict / single-row API)"
    if args.native:
        predictor._compile_started = True  # no background compilation either
    else:
        t = time.process_time()
        if predictor.compile():
            engine = f"compiled (lleaves, checked exact; compiled in {time.process_time() - t:.1f} CPU-s)"
    frame = pq.read_table(DATA, columns=FEATURES).to_pandas()
    picked = np.random.default_rng(7).choice(len(frame), size=args.rows, replace=False)
    records = [{c: float(v) for c, v in row.items()} for row in frame.iloc[picked].to_dict("records")]
    body = json.dumps(records[0] if args.rows == 1 else records).encode()
    post = asgi_post(app, body)
    buffer = state.predictions

    def drain() -> None:  # the request's log rows are kept; the flush (off the request) is not timed
        if len(buffer) > buffer.capacity // 2:
            buffer._rows.clear()
            buffer._size = 0

    out = post()
    response = json.loads(out)
    assert len(response["predictions"]) == args.rows
    stages = stage_calls(app, state, predictor, body)
    print(f"load average {loadavg()}; {args.rows:,} rows; engine for > 8 rows: {engine}; "
          f"CPU ms per call, best of {args.repeat} x {args.number}")
    total = best_ms(post, repeat=args.repeat, number=args.number, setup=drain)
    print(f"  {'request (ASGI hot path)':<28}{total:8.3f}")
    parts = 0.0
    for name, fn in stages.items():
        ms = best_ms(fn, repeat=args.repeat, number=args.number, setup=drain)
        parts += ms
        print(f"  {name:<28}{ms:8.3f}")
    print(f"  {'sum of stages':<28}{parts:8.3f}")
    print(f"load average after {loadavg()}")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(50):
            drain()
            post()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue())


def stage_calls(app: Any, state: Any, predictor: Any, body: bytes) -> dict[str, Callable[[], Any]]:
    """One call per stage of ``ServerState.score`` and the hot route, each fed the previous stage's
    output (computed once here)."""
    from datetime import datetime, timezone

    import orjson

    from tidal.serving.app import COLUMNS_FROM, prediction_ids
    from tidal.serving.schema import record_decoder, record_model

    decode = record_decoder(record_model(state.spec), columns_from=COLUMNS_FROM)
    records = decode(body)
    def features() -> Any:  # the server's path: rows read in one pass for a numeric model, else the columns
        return predictor.matrix(records)

    X = features()
    scores = predictor.predict(X)
    preds, probs, decisions = predictor.outputs(scores)
    now = datetime.now(timezone.utc)

    def log_rows() -> list[str]:
        ids = prediction_ids(len(records))
        state._log(records, ids, now, predictor.version, scores, preds, decisions, shadow=False,
                   numbers=(X, predictor.bundle.pipeline.numeric_positions))
        return ids

    ids = log_rows()

    def respond() -> bytes:
        out = [{"prediction_id": pid, "prediction": pred, "probability": prob, "decision": dec}
               for pid, pred, prob, dec in zip(ids, preds, probs, decisions)]
        return orjson.dumps({"model_version": predictor.version, "predictions": out})

    return {"decode + validation": lambda: decode(body), "features": features,
            "predict": lambda: predictor.predict(X), "outputs (decision rule)": lambda: predictor.outputs(scores),
            "ids + prediction log": log_rows, "response (dicts + orjson)": respond}


if __name__ == "__main__":
    sys.exit(main())
