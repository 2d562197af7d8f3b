"""``POST /v1/ingest``: batches pushed over HTTP by the spec's ``http`` source.

The route exists only when the spec declares an http source. A caller sends a bearer
token (from the environment variable the source names), and a JSON array of records or
CSV text; the batch is validated and committed exactly like any other source's, and the
ingest report comes back. An ``Idempotency-Key`` header names the batch, so a retried
request is recognised and not applied twice (without it, the body's sha256 does). With
history features, the entities the batch touched get their online store rows recomputed
from the lake before the response, so the next request sees the new events.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from typing import Any

import orjson
import polars as pl
from fastapi import FastAPI, Request
from fastapi.responses import Response

from tidal.data.sources.base import digest
from tidal.errors import PayloadTooLarge, RequestValidationError
from tidal.features.history import with_joined_features
from tidal.registry.bundle import guard_model
from tidal.serving.auth import require_bearer

MAX_KEY_CHARS = 200
log = logging.getLogger("tidal.serving")


def _json_frame(body: bytes) -> pl.DataFrame:
    """A JSON array of objects as a frame of text columns (typed later by the spec, like CSV)."""
    try:
        records = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError(f"the body is not valid JSON: {exc}",
                                     fix="send a JSON array of records, or CSV with Content-Type: text/csv") from None
    if not isinstance(records, list) or not records:
        raise RequestValidationError("the body must be a non-empty JSON array of records",
                                     fix='send e.g. [{"tenure": 3, ...}, ...]')
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise RequestValidationError(f"record {bad} is a {type(records[bad]).__name__}, not an object",
                                     fix="send every record as a JSON object of column: value")
    columns = list(dict.fromkeys(k for r in records for k in r))
    rows = [{c: _text(r.get(c)) for c in columns} for r in records]
    return pl.DataFrame(rows, schema={c: pl.String for c in columns})


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _csv_frame(body: bytes) -> pl.DataFrame:
    try:
        return pl.read_csv(io.BytesIO(body), infer_schema=False)
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise RequestValidationError(f"the body is not valid CSV: {exc}",
                                     fix="send CSV with a header row, or a JSON array of records") from None


def add_ingest_routes(app: FastAPI, state: Any) -> None:
    """Add ``POST /v1/ingest`` when the spec has an http source (else nothing)."""
    config = next((s for s in state.spec.sources if s.kind == "http"), None)
    if config is None:
        return
    name = config.name or "http"
    lock = asyncio.Lock()  # one batch at a time: idempotency checks and lake commits stay ordered

    async def _body(request: Request) -> bytes:
        too_large = PayloadTooLarge(f"the body is larger than {config.max_bytes} bytes",
                                    fix="split the batch into smaller requests, "
                                        "or raise max_bytes in the spec's http source")
        declared = request.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > config.max_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/ingest", tags=["data"], openapi_extra={
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "text/csv": {"schema": {"type": "string"}}}},
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "maxLength": MAX_KEY_CHARS},
                        "description": "Names the batch: a request repeated with the same key is not applied twice."}]})
    async def ingest(request: Request) -> Response:
        """Validate a pushed batch and commit its accepted rows; quarantine the rest with reasons."""
        from tidal.data.ingest import ingest_frame

        require_bearer(request, config.token_env, "ingestion over HTTP")
        body = await _body(request)
        if not body.strip():
            raise RequestValidationError("empty body; send a JSON array of records or CSV text")
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= MAX_KEY_CHARS):
            raise RequestValidationError(f"the Idempotency-Key header must have 1 to {MAX_KEY_CHARS} characters")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        frame = _csv_frame(body) if media == "text/csv" else _json_frame(body)
        sha = digest("http", name, key) if key is not None else hashlib.sha256(body).hexdigest()
        # the production model as the guard (with the batch's lookup and history features, as in training)
        guard = None if state.predictor is None else with_joined_features(
            guard_model(state.predictor.bundle), state.spec, state.ws.lake)
        async with lock:
            report = await asyncio.to_thread(ingest_frame, state.ws, state.spec, frame, batch_id=f"b-{sha[:16]}",
                                             source=name, content_sha256=sha, trust=config.trust,
                                             model=guard)
        if state.history is not None and report.rows_accepted and not report.already_ingested:
            try:  # the touched entities' history, recomputed from the lake, before the next request
                await asyncio.to_thread(state.sync_history)
            except Exception:  # noqa: BLE001 - the batch is committed; the reload tick retries the store
                log.exception("could not update the online store after batch %s", report.batch_id)
        return Response(orjson.dumps(report.as_dict()), media_type="application/json")
