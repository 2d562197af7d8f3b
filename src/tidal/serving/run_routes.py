"""Run tracking over HTTP, read-only: ``GET /v1/runs`` and ``GET /v1/runs/{run_id}``.

The same records as ``tidal runs list`` and ``tidal runs show``: parameters, metrics, data
versions, code version, duration and artifact files. Nothing here changes state, so no
token is needed; an unknown run is the usual 404 error body.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder

from tidal.infra import runlog


def add_run_routes(app: FastAPI, state: Any) -> None:
    @app.get("/v1/runs", tags=["runs"], summary="Every training run, oldest first")
    async def runs_list() -> list[dict[str, Any]]:
        return jsonable_encoder(await asyncio.to_thread(runlog.list_runs, state.ws.store))

    @app.get("/v1/runs/{run_id}", tags=["runs"], summary="One run with its artifacts")
    async def runs_show(run_id: str) -> dict[str, Any]:
        return jsonable_encoder(await asyncio.to_thread(runlog.show_run, state.ws.store, run_id))
