"""The HTTP server: FastAPI on uvicorn, a thin face over the predictor, the registry and the lake.

Hot path: POST /v1/predict (each API version's predict) is answered before FastAPI's middleware
and routing (a plain ASGI handler on the event loop: no thread hop): bytes -> msgspec Struct generated from the record
model (the pydantic model only when msgspec refuses the body, to accept what it accepts or
name every problem) -> pipeline -> LightGBM -> orjson; the prediction log is an append of
one tuple per row to a bounded buffer. A request of :data:`COLUMNS_FROM` records or more is
decoded, featurised and logged column-wise (:class:`RecordColumns`, one log chunk) and scored
by the compiled model once it is ready (:class:`Predictor`), with the cyclic garbage collector
paused. Background tasks flush the buffers to the lake and swap in a new production model
(one reference assignment) without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from tidal.errors import Gone, NotFound, NotReady, Problem, RequestValidationError, TidalError
from tidal.features.online import OnlineLookups
from tidal.features.pipeline import record_values
from tidal.infra.logrows import NullableFloats
from tidal.infra.logwriter import LocalSink, ProcessSink
from tidal.infra.workspace import Workspace
from tidal.registry import contracts
from tidal.registry.registry import Registry
from tidal.serving.admin_routes import add_admin_routes
from tidal.serving.compat_routes import add_compat_routes
from tidal.serving.ingest_routes import add_ingest_routes
from tidal.serving.columns import COLUMNS_FROM, RecordColumns
from tidal.serving.logbuffer import LogBuffer
from tidal.serving.predictor import SMALL_BATCH, Predictor
from tidal.serving.routing import Deployment, LiveStats, breach
from tidal.serving.run_routes import add_run_routes
from tidal.serving.schema import (FeedbackResponse, PredictResponse, contract_record_model, feedback_model,
                                  record_decoder, record_model)
from tidal.spec import Spec

log = logging.getLogger("tidal.serving")

GC_PAUSE_BYTES = 16_384  # request bodies from this size are scored with the cyclic garbage collector paused

_ARROW = {"numeric": pa.float64(), "categorical": pa.string(), "boolean": pa.bool_(),
          "datetime": pa.timestamp("us", tz="UTC")}


def prediction_log_schema(spec: Spec) -> pa.Schema:
    # ServerState._log() builds each log row as a tuple in this order (or a chunk of these columns)
    fields = [pa.field("_id", pa.string()), pa.field("_ts", pa.timestamp("us", tz="UTC")),
              pa.field("_version", pa.int64()), pa.field("_score", pa.float64()),
              pa.field("_prediction", pa.string()), pa.field("_decision", pa.string()),
              pa.field("_shadow", pa.bool_())]
    fields += [pa.field(n, _ARROW[f.type]) for n, f in spec.model_features.items()]  # lookup values as joined
    if spec.entity_key and spec.entity_key not in spec.features:
        fields.append(pa.field(spec.entity_key, pa.string()))
    fields += [pa.field(k, pa.string()) for k in spec.lookup_keys if k not in spec.features and k != spec.entity_key]
    if spec.lookups or spec.history:  # the time the lookups (and history) were read as of
        fields.append(pa.field(spec.event_time, pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


LABEL_SCHEMA = pa.schema([pa.field("_id", pa.string()), pa.field("_label", pa.string()),
                          pa.field("_ts", pa.timestamp("us", tz="UTC"))])


_UUID_VERSION = bytes(x & 0x0F | 0x40 for x in range(256))  # byte 6 of a version-4 UUID
_UUID_VARIANT = bytes(x & 0x3F | 0x80 for x in range(256))  # byte 8: the RFC 4122 variant


def prediction_ids(n: int) -> list[str]:
    """``n`` random ids in ``uuid.uuid4().hex``'s format (version 4 UUIDs) from one ``os.urandom`` call."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = raw[6::16].translate(_UUID_VERSION)
    raw[8::16] = raw[8::16].translate(_UUID_VARIANT)
    text = raw.hex()
    return [text[i:i + 32] for i in range(0, 32 * n, 32)]


def _problems(exc: ValidationError, prefix: str) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]))
        out.append(Problem(loc, err["msg"]))
    return out


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tidal_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.predictions = Counter("tidal_predictions", "Rows scored", ["model_version"], registry=r)
        self.latency = Histogram("tidal_predict_seconds", "Time to score one /v1/predict request", registry=r,
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.dropped = Gauge("tidal_log_dropped", "Prediction log rows dropped because the buffer was full", registry=r)
        self.version = Gauge("tidal_model_version", "Model version in service", registry=r)
        self.swaps = Counter("tidal_model_swaps", "Hot swaps of the production model", registry=r)


class ServerState:
    """What the server holds: the predictor in service (swapped whole) and the log buffers."""

    def __init__(self, spec: Spec, ws: Workspace) -> None:
        self.spec = spec
        self.ws = ws
        self.deployment = Deployment()  # replaced whole on every change
        self.live = LiveStats()
        self.probation: set[int] = set()  # production versions swapped in while serving: watched for rollback
        self.shadow_queue: deque[tuple[list[dict[str, Any]], list[str], int]] = deque(maxlen=10_000)
        self.metrics = _Metrics()
        # the logs' Arrow conversion and Delta commits: in a writer process unless the spec says a thread
        self.log_sink = ProcessSink(ws.lake.root) if spec.serving.log_writer == "process" else LocalSink(ws.lake)
        self.flush_due = threading.Event()  # a buffer is half full: flush now, not at the end of the interval
        self.predictions = LogBuffer(lake=ws.lake, table="predictions", schema=prediction_log_schema(spec),
                                     capacity=spec.serving.log_buffer_size, sink=self.log_sink, due=self.flush_due)
        self.labels = LogBuffer(lake=ws.lake, table="labels", schema=LABEL_SCHEMA,
                                capacity=spec.serving.log_buffer_size, sink=self.log_sink, due=self.flush_due)
        self.logged_columns = [f.name for f in self.predictions.schema if not f.name.startswith("_")]
        self._scored_counters: dict[int, Any] = {}
        # the API versions (contracts): the newest is answered by the deployment, an older one by its pinned version
        self.apis: dict[str, dict[str, Any]] = {}  # every API version's contract, by name
        self.newest_api = contracts.API_VERSION
        self.pinned: dict[str, Predictor] = {}  # older API version -> the version answering it (not retired)
        self.lookups = OnlineLookups(spec) if spec.lookups else None
        self.history = None  # the history features, from the online store (no I/O until sync_history)
        if spec.history:
            from tidal.features.online_history import OnlineHistory, open_history_store

            self.history = OnlineHistory(spec, open_history_store(spec))

    def sync_history(self) -> None:
        """Bring the online store up to the lake's newest events (a no-op without history features)."""
        if self.history is not None and (written := self.history.sync(self.ws.lake)):
            log.info("online store: %d entities written (events v%s)", written, self.history.version)

    def refresh_lookups(self) -> None:
        """Reload each lookup whose lake table has a new version (a no-op without lookups)."""
        if self.lookups is not None and (rebuilt := self.lookups.refresh(self.ws.lake)):
            log.info("lookup index refreshed: %s", ", ".join(f"{n} v{self.lookups.versions[n]}" for n in rebuilt))

    def check_lookups(self) -> None:
        if self.lookups is not None and self.lookups.missing:
            names = ", ".join(self.lookups.missing)
            raise NotReady(f"lookup data is not loaded yet: {names}",
                           fix=f"ingest it (`tidal ingest --lookup NAME [FILE]`); the server picks it up "
                               f"within serving.reload_interval_s")

    @property
    def predictor(self) -> Predictor | None:
        """The production predictor (what answers when there is no canary)."""
        return self.deployment.production

    def load_production(self) -> bool:
        """Load the production, canary and shadow versions when any changed; True if the deployment changed."""
        current = self.deployment
        rows = {stage: self.ws.store.in_stage(stage) for stage in ("production", "canary", "shadow")}
        wanted = tuple(r["version"] if r else None for r in rows.values())
        if wanted == current.versions:
            return False
        loaded = {p.version: p for p in (current.production, current.canary, current.shadow) if p}
        registry = Registry(self.ws)

        def predictor(version: int | None) -> Predictor | None:
            if version is None:
                return None
            if version not in loaded:
                _, bundle = registry.load(version)
                loaded[version] = Predictor(version=version, bundle=bundle)
            return loaded[version]

        production, canary, shadow = (predictor(v) for v in wanted)
        if production is not None and current.production is not None and production.version != current.production.version:
            self.probation.add(production.version)
            self.live.reset(production.version)
        self.deployment = Deployment(production=production, canary=canary, shadow=shadow,  # atomic swap
                                     canary_share=self.spec.serving.canary_share)
        if production is not None:
            self.metrics.version.set(production.version)
        self.metrics.swaps.inc()
        log.info("serving production %s, canary %s, shadow %s", *wanted)
        return True

    def watchdog(self) -> str | None:
        """Roll back a canary, or a production version swapped in while serving, whose live error
        rate or p99 latency breaks the guardrails. Returns what it did, or None."""
        if not self.spec.serving.auto_rollback:
            return None
        g = self.spec.guardrails
        limits = {"max_error_rate": g.max_error_rate, "p99_ms": g.p99_latency_ms, "min_requests": g.min_live_requests}
        registry = Registry.for_spec(self.ws, self.spec)
        deployment = self.deployment
        if deployment.canary is not None and (why := breach(self.live.summary(deployment.canary.version), **limits)):
            registry.withdraw("canary", actor="tidal-watchdog", reason=f"auto-rollback of the canary: {why}")
            self.load_production()
            log.warning("withdrew canary %s: %s", deployment.canary.version, why)
            return f"withdrew canary {deployment.canary.version}: {why}"
        production = deployment.production
        if production is not None and production.version in self.probation:
            why = breach(self.live.summary(production.version), **limits)
            if why:
                self.probation.discard(production.version)
                back = registry.rollback(actor="tidal-watchdog", reason=f"auto-rollback of {production.version}: {why}")
                self.load_production()
                self.probation.discard(back["version"])  # the known-good version: not judged (no ping-pong)
                log.warning("rolled back %s to %s: %s", production.version, back["version"], why)
                return f"rolled back {production.version} to {back['version']}: {why}"
        return None

    def load_apis(self) -> bool:
        """Read the API versions and load the version pinned to each older one; True if any changed."""
        every = {c["api"]: c for c in contracts.all_contracts(self.ws)}  # oldest first
        if every == self.apis:
            return False
        pins = contracts.pinned(every.values())
        current = self.deployment
        loaded = {p.version: p for p in (*self.pinned.values(), current.production, current.canary, current.shadow) if p}
        registry = Registry(self.ws)
        pinned = {}
        for api, version in pins.items():
            pinned[api] = loaded.get(version) or Predictor(version=version, bundle=registry.load(version)[1])
        newest = next(reversed(every), contracts.API_VERSION)
        self.pinned, self.newest_api, self.apis = pinned, newest, every  # a request reads pinned once
        log.info("API versions: /%s answered by production%s", newest,
                 "".join(f", /{a} by version {p.version}" for a, p in pinned.items()))
        return True

    def reload(self) -> None:
        """The background reload: new versions in, then the watchdog."""
        self.load_production()
        self.watchdog()
        self.load_apis()

    def score(self, records: list[dict[str, Any]], *, after: "AfterAnswer | None" = None,
              predictor: Predictor | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Score validated records with the model in service and log each prediction.

        Every protocol (tidal's /v1, OIP v2, MLflow's /invocations) comes through here. With
        ``after``, the log's append waits there until the answer is sent (the hot route). With
        ``predictor`` (an older API version's pinned version), that one answers: no canary, no shadow.
        """
        deployment = self.deployment  # read once: a swap mid-request cannot mix two models
        shadow = None
        if predictor is None:
            key = records[0].get(self.spec.entity_key) if self.spec.entity_key else None
            if key is None and deployment.canary is not None:  # without a canary the key is not used
                key = uuid.uuid4().int
            predictor, shadow = deployment.route(key), deployment.shadow
        if predictor is None:
            raise NotReady("no model is in production yet", fix="run `tidal promote latest`")
        if self.lookups is not None or self.history is not None:
            records = [dict(r) for r in records]
        if self.lookups is not None:  # the lookup features, as of each record's event time
            self.check_lookups()
            self.lookups.lookup(records)
        if self.history is not None:  # the entity's history features: one read of the online store
            self.history.fill(records)
        started = time.perf_counter()
        try:
            X = predictor.matrix(records)
            scores = predictor.predict(X)
            preds, probs, decisions = predictor.outputs(scores)
        except Exception:
            self.live.record(predictor.version, time.perf_counter() - started, False)
            raise
        self.live.record(predictor.version, time.perf_counter() - started, True)
        if len(records) > SMALL_BATCH:  # large requests: the compiled model, once it is ready
            predictor.compile_in_background()
        now = time.time_ns() // 1000  # the log's _ts in microseconds since the epoch (UTC): no datetime a row
        version = predictor.version
        ids = prediction_ids(len(records))
        out = [{"prediction_id": pid, "prediction": pred, "probability": prob, "decision": dec}
               for pid, pred, prob, dec in zip(ids, preds, probs, decisions)]
        def log_rows() -> None:
            self._log(records, ids, now, version, scores, preds, decisions, shadow=False,
                      numbers=(X, predictor.bundle.pipeline.numeric_positions))

        if after is None:
            log_rows()
        else:
            after.tasks.append(log_rows)
        if shadow is not None:  # scored later, off the hot path
            self.shadow_queue.append((records, ids, now))
        self._scored(version).inc(len(records))
        return version, out

    def _log(self, records: list[dict[str, Any]] | RecordColumns, ids: list[str], at: int, version: int,
             scores: np.ndarray, preds: list[Any], decisions: list[Any], *, shadow: bool,
             numbers: tuple[np.ndarray, dict[str, int]] | None = None) -> None:
        """Append one request's rows to the prediction log: a tuple a row, or one chunk of columns for
        a large request (the same values; no tuple per row).

        ``numbers`` (the model's matrix, each numeric feature's column in it) lets a large request
        decoded column-wise log its numeric features from the matrix (the values as given, NaN
        where missing): arrays, where Python floats in tuples would stay alive until the flush, for
        the garbage collector to walk one by one. Only column-wise requests, whose decoders never
        let a NaN through (JSON cannot send one; the OIP path refuses it), so NaN means null there;
        records from the Python API may hold a NaN, which the log keeps as NaN.
        """
        n = len(ids)
        if n < COLUMNS_FROM:
            append = self.predictions.append
            for values, pid, pred, dec, score in zip(record_values(records, self.logged_columns), ids, preds,
                                                     decisions, scores.tolist()):
                append((pid, at, version, score, str(pred), str(dec), shadow, *values))
            return
        from_matrix = numbers[1] if numbers is not None and isinstance(records, RecordColumns) else {}
        columns: dict[str, Any] = {name: NullableFloats(numbers[0][:, from_matrix[name]])  # type: ignore[index]
                                   for name in self.logged_columns if name in from_matrix}
        if len(columns) < len(self.logged_columns):
            batch = RecordColumns.from_records(records, [c for c in self.logged_columns if c not in columns])
            columns.update(batch.columns)
        self.predictions.append_columns({  # tuples: the collector stops walking them after one look
            "_id": tuple(ids), "_ts": (at,) * n, "_version": (version,) * n, "_score": scores,
            "_prediction": tuple(map(str, preds)), "_decision": tuple(map(str, decisions)), "_shadow": (shadow,) * n,
            **columns}, n)

    def _scored(self, version: int) -> Any:
        """The rows-scored counter of ``version`` (label lookups cached: they cost a lock each)."""
        child = self._scored_counters.get(version)
        if child is None:
            child = self._scored_counters[version] = self.metrics.predictions.labels(str(version))
        return child

    def score_shadow(self) -> int:
        """Score the queued requests with the shadow version and log its answers (returned to nobody)."""
        shadow = self.deployment.shadow
        n = 0
        while self.shadow_queue:
            records, ids, at = self.shadow_queue.popleft()
            if shadow is None:
                continue
            scores = shadow.scores(records)
            preds, _, decisions = shadow.outputs(scores)
            self._log(records, ids, at, shadow.version, scores, preds, decisions, shadow=True)
            n += len(ids)
        return n

    def flush_when_due(self) -> None:
        """Flush once ``serving.flush_interval_s`` has passed, or sooner when a buffer is half full."""
        self.flush_due.wait(self.spec.serving.flush_interval_s)
        try:
            self.flush()
        except Exception:
            time.sleep(self.spec.serving.flush_interval_s)  # a failing flush is retried at the interval, not at once
            raise

    def flush(self) -> None:
        self.flush_due.clear()
        self.score_shadow()
        for buf in (self.predictions, self.labels):
            buf.flush()
        self.metrics.dropped.set(self.predictions.dropped)


async def _every(seconds: float, fn: Any) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(fn)
        except Exception:  # noqa: BLE001 - keep the loop alive; the error is logged
            log.exception("background task %s failed", getattr(fn, "__name__", fn))


def create_app(spec: Spec, ws: Workspace) -> FastAPI:
    state = ServerState(spec, ws)
    Record = record_model(spec)
    Feedback = feedback_model(spec)
    one_feedback, many_feedback = TypeAdapter(Feedback), TypeAdapter(list[Feedback])

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if isinstance(state.log_sink, ProcessSink):
            state.log_sink.start()  # starts while the model loads (the process imports for about 0.3 s)
        try:
            await asyncio.to_thread(state.load_production)
        except TidalError:
            log.exception("could not load the production model; /readyz reports not ready")
        try:
            await asyncio.to_thread(state.load_apis)
        except TidalError:
            log.exception("could not load the model versions pinned to older API versions")
        route_apis()
        try:
            await asyncio.to_thread(state.refresh_lookups)
        except TidalError:
            log.exception("could not load the lookups; /readyz reports not ready")
        try:
            await asyncio.to_thread(state.sync_history)
        except Exception:  # noqa: BLE001 - e.g. Redis down: retried on every reload tick
            log.exception("could not fill the online store from the lake")
        # what start-up left alive (modules, the model, the pipeline: about 200,000 objects) moves to
        # the collector's permanent generation: a full collection walked it all, 40-115 ms, mid-request
        gc.collect()
        gc.freeze()
        tasks = [asyncio.create_task(_every(0, state.flush_when_due)),
                 asyncio.create_task(_every(spec.serving.reload_interval_s, reload))]
        if state.lookups is not None:
            tasks.append(asyncio.create_task(_every(spec.serving.reload_interval_s, state.refresh_lookups)))
        if state.history is not None:  # events ingested elsewhere (CLI, another server) reach the store
            tasks.append(asyncio.create_task(_every(spec.serving.reload_interval_s, state.sync_history)))
        yield
        for t in tasks:
            t.cancel()
        state.flush_due.set()  # wakes a flush waiting for its interval
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(state.flush)  # graceful shutdown: nothing buffered is lost
        await asyncio.to_thread(state.log_sink.close)
        if state.history is not None:
            state.history.store.close()

    def reload() -> None:
        state.reload()
        route_apis()

    app = _TidalAPI(title=f"tidal: {spec.name}", version="1", lifespan=lifespan,
                    description=spec.description or f"Predictions of {spec.target}.")
    app.state.tidal = state

    @app.exception_handler(TidalError)
    async def _tidal_error(_: Request, exc: TidalError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status_code)

    @app.exception_handler(FastAPIValidationError)
    async def _validation_error(_: Request, exc: FastAPIValidationError) -> JSONResponse:
        err = RequestValidationError("the request does not fit the API contract",
                                     problems=[Problem(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()])
        return JSONResponse(err.to_body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"error": {"code": "internal_error", "message": "internal error; see the server log"}},
                            status_code=500)

    def _parse(body: bytes, one: TypeAdapter, many: TypeAdapter, what: str) -> list[Any]:
        stripped = body.lstrip()
        if not stripped:
            raise RequestValidationError(f"empty body; send one {what} object or a JSON array of them")
        try:
            if stripped[:1] == b"[":
                items = many.validate_json(body)
                if not items:
                    raise RequestValidationError("the array is empty; send at least one " + what)
                return items
            return [one.validate_json(body)]
        except ValidationError as exc:
            raise RequestValidationError(f"the {what} does not fit the API contract",
                                         problems=_problems(exc, "body")) from None

    # OpenAPI documents every API version answered at startup: the newest with the spec's record
    # model, an older one with its contract's (the hot route answers them all: predict_any)
    at_start = contracts.all_contracts(ws)
    documented = {c["api"]: contract_record_model(spec, c) for c in at_start[:-1] if not c.get("retired")}
    documented[at_start[-1]["api"] if at_start else contracts.API_VERSION] = Record

    def declare_predict(api: str, model: Any) -> None:
        def many_or_one(name: str) -> dict[str, Any]:
            return {"oneOf": [{"$ref": f"#/components/schemas/{name}"},
                              {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}]}

        @app.post(f"/{api}/predict", response_model=PredictResponse, name=f"predict_{api}", openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": many_or_one(model.__name__)}}}})
        async def predict(request: Request) -> Response:  # answered by the hot route before routing
            return Response(predict_any(await request.body(), None, request.scope), media_type="application/json")

    for api, model in documented.items():
        declare_predict(api, model)

    def records_reader(model: Any) -> Any:
        """A reader of request bodies into validated records of the record model ``model``."""
        fast = record_decoder(model, columns_from=COLUMNS_FROM)
        one, many = TypeAdapter(model), TypeAdapter(list[model])  # type: ignore[valid-type]

        def read(body: bytes) -> list[dict[str, Any]]:
            records = fast(body) if fast is not None else None
            if records is None:  # pydantic accepts it the same way or names every problem
                records = [r.__dict__ for r in _parse(body, one, many, "record")]
            return records

        return read

    records_of = records_reader(Record)
    older_readers: dict[str, Any] = {}  # an older API version's reader, from its contract

    def predict_any(body: bytes, after: AfterAnswer | None, scope: dict) -> bytes:
        """POST /{api}/predict: the newest API version is answered by the deployment (production,
        canary, shadow), an older one by the version pinned to it; a retired one is gone."""
        api = scope["path"][1:-len("/predict")]
        if api == state.newest_api:
            return predict_bytes(body, after)
        pinned = state.pinned.get(api)
        if pinned is None:
            newest = f"/{state.newest_api}/predict"
            retired = (state.apis.get(api) or {}).get("retired")
            if retired:
                raise Gone(f"/{api} was retired on {retired['at'][:10]} ({retired['reason']})",
                           fix=f"send requests to {newest}; its contract: `tidal contract show`")
            raise NotFound(f"there is no /{api} API version", fix=f"send requests to {newest}")
        read = older_readers.get(api)
        if read is None:
            read = older_readers[api] = records_reader(contract_record_model(spec, state.apis[api]))
        return predict_bytes(body, after, read=read, predictor=pinned)

    def predict_bytes(body: bytes, after: AfterAnswer | None = None, *, read: Any = None,
                      predictor: Predictor | None = None) -> bytes:
        """The answer to a POST /v1/predict body. With ``after`` (the hot route), the prediction log's
        append, freeing the request's objects and resuming the collector wait until it is sent.
        ``read`` and ``predictor``: an older API version's reader and pinned version."""
        started = time.perf_counter()
        # a large request allocates thousands of short-lived containers (a tuple a decoded record, a
        # dict an answer), enough to run the cyclic collector several times over while they are alive
        # (measured: 3 collections, about 40% of a 1,000-row request's CPU). It is paused until they
        # are gone: they form no cycles, so it finds nothing to free by waiting for them.
        pause = len(body) >= GC_PAUSE_BYTES and gc.isenabled()
        if pause:
            gc.disable()
        try:
            records = (read or records_of)(body)
            version, out = state.score(records, after=after, predictor=predictor)
            state.metrics.latency.observe(time.perf_counter() - started)
            payload = orjson.dumps({"model_version": version, "predictions": out})
            if after is not None:
                after.keep += (records, out)
            return payload
        finally:
            if pause and after is not None:
                after.resume_gc = True
            elif pause:
                gc.enable()

    def route_apis() -> None:
        """A hot route for every API version's predict path (new ones appear at a reload)."""
        for api in (contracts.API_VERSION, *state.apis):
            path = f"/{api}/predict"
            if path not in app.hot_routes:
                app.hot_routes[path] = _hot_route(predict_any, state.metrics.requests, route=path)

    app.hot_routes = {}
    route_apis()

    @app.post("/v1/feedback", response_model=FeedbackResponse, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": {
            "oneOf": [{"$ref": f"#/components/schemas/{Feedback.__name__}"},
                      {"type": "array", "items": {"$ref": f"#/components/schemas/{Feedback.__name__}"}}]}}}}})
    async def feedback(request: Request) -> Response:
        items = _parse(await request.body(), one_feedback, many_feedback, "feedback")
        now = datetime.now(timezone.utc)
        accepted = state.labels.extend([
            {"_id": f.prediction_id, "_label": _label_text(f.label), "_ts": now} for f in items])
        return Response(orjson.dumps({"accepted": accepted}), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        predictor = state.predictor
        if predictor is None:
            raise NotReady("no model is loaded yet", fix="promote a model: `tidal promote latest`")
        state.check_lookups()
        body: dict[str, Any] = {"status": "ready", "model_version": predictor.version}
        if state.lookups is not None:
            body["lookup_versions"] = state.lookups.versions
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.dropped.set(state.predictions.dropped)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # publish the generated record schemas in OpenAPI
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original_openapi()
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (*documented.values(), Feedback):
            s = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(s.pop("$defs", {}))
            comps[model.__name__] = s
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_CountRequests, counter=state.metrics.requests)
    add_ingest_routes(app, state)
    add_admin_routes(app, state)
    add_run_routes(app, state)
    infer_bytes = add_compat_routes(app, state, Record)
    app.hot_routes[f"/v2/models/{spec.name}/infer"] = _hot_route(
        lambda body, after, scope: infer_bytes(body, Headers(scope=scope).get("inference-header-content-length"),
                                               after=after),
        state.metrics.requests, route="/v2")
    return app


class _TidalAPI(FastAPI):
    """FastAPI, with the scoring routes (``POST /{api}/predict``, OIP v2's infer of this model) answered
    before its middleware and routing (the hot path); the routes stay declared for OpenAPI."""

    hot_routes: dict[str, Any]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            hot = self.hot_routes.get(scope["path"])
            if hot is not None:
                await hot(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class AfterAnswer:
    """What a request leaves until its answer is sent: the prediction log's append, freeing its
    objects (a 1,000-row request's take about 0.2 ms) and resuming the garbage collector.
    The client has its answer that much sooner; the work is the same."""

    __slots__ = ("keep", "resume_gc", "tasks")

    def __init__(self) -> None:
        self.tasks: list[Any] = []
        self.keep: list[Any] = []
        self.resume_gc = False

    def run(self) -> None:
        try:
            for task in self.tasks:
                task()
        except Exception:  # noqa: BLE001 - the answer is sent: the failure goes to the log
            log.exception("after answering: a prediction log append failed")
        finally:
            self.tasks.clear()
            self.keep.clear()
            if self.resume_gc:
                gc.enable()


_JSON_HEADERS = [(b"content-type", b"application/json")]
_INTERNAL_ERROR = orjson.dumps({"error": {"code": "internal_error", "message": "internal error; see the server log"}})


def _hot_route(handle: Any, counter: Counter, *, route: str) -> Any:
    """A plain ASGI app answering with ``handle(body, after, scope)``: the error bodies of the app's
    exception handlers, and the request counter (under ``route``) that the middleware keeps for the
    other routes."""
    counted: dict[int, Any] = {}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        unexpected = None
        after = AfterAnswer()
        try:
            try:
                status, payload = 200, handle(chunks[0] if len(chunks) == 1 else b"".join(chunks), after, scope)
            except TidalError as exc:
                status, payload = exc.status_code, orjson.dumps(exc.to_body())
            except Exception as exc:  # noqa: BLE001 - answered like the app's handler, then re-raised like Starlette
                log.error("unhandled error", exc_info=exc)
                status, payload, unexpected = 500, _INTERNAL_ERROR, exc
        finally:
            # once the answer is on its way: right after the sends below, or while a client that does not
            # read makes them wait (the collector must not stay paused that long)
            asyncio.get_running_loop().call_soon(after.run)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(payload)).encode()), *_JSON_HEADERS]})
        await send({"type": "http.response.body", "body": payload})
        child = counted.get(status)
        if child is None:
            child = counted[status] = counter.labels(route, str(status))
        child.inc()
        if unexpected is not None:
            raise unexpected

    return app


class _CountRequests:
    """Pure ASGI middleware counting responses by route and status (cheap: no request wrapping)."""

    ROUTES = {"/v1/predict", "/v1/feedback", "/v1/ingest", "/v1/quarantine", "/invocations", "/healthz", "/readyz",
              "/metrics"}

    def __init__(self, app: Any, *, counter: Counter) -> None:
        self.app = app
        self.counter = counter
        self.counted: dict[tuple[str, int], Any] = {}  # label lookups cached: they cost a lock each

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            route = path if path in self.ROUTES else "/v2" if path.startswith("/v2/") else "other"
            child = self.counted.get((route, status))
            if child is None:
                child = self.counted[(route, status)] = self.counter.labels(route, str(status))
            child.inc()


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
