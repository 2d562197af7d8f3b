"""Run tracking and model lineage over HTTP, read-only: ``GET /v1/runs``, ``GET /v1/runs/{run_id}``
and ``GET /v1/models/{version}``.

The same records as ``tidal runs list``, ``tidal runs show`` and ``tidal models show``:
parameters, metrics, data versions, code version, duration and artifact files; a version's
lineage, approval status and history. Nothing here changes state, so no token is needed;
an unknown run or version is the usual 404 error body.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder

from tidal.infra import runlog
from tidal.registry.registry import Registry


def add_run_routes(app: FastAPI, state: Any) -> None:
    @app.get("/v1/runs", tags=["runs"], summary="Every training run, oldest first")
    async def runs_list() -> list[dict[str, Any]]:
        return jsonable_encoder(await asyncio.to_thread(runlog.list_runs, state.ws.store))

    @app.get("/v1/runs/{run_id}", tags=["runs"], summary="One run with its artifacts")
    async def runs_show(run_id: str) -> dict[str, Any]:
        return jsonable_encoder(await asyncio.to_thread(runlog.show_run, state.ws.store, run_id))

    @app.get("/v1/models/{version}", tags=["models"],
             summary="One model version's lineage, approval status and history")
    async def models_show(version: str) -> dict[str, Any]:
        registry = Registry.for_spec(state.ws, state.spec)
        return jsonable_encoder(await asyncio.to_thread(registry.lineage, version))
