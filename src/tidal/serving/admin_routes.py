"""Admin routes, token-protected: the quarantine over HTTP (list, show, release, drop) and the
approval of model versions (approve, reject).

The token is read from the environment variable named by ``serving.admin_token_env``;
when it is unset the routes answer 503 with how to enable them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field

from tidal.data import quarantine as q
from tidal.registry.registry import Registry
from tidal.serving.auth import require_bearer


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, description="Why, for the record.")
    actor: str | None = Field(None, description="Who decides (default: 'http').")


def require_token(request: Request, env_name: str) -> None:
    require_bearer(request, env_name, "the admin API")


def add_admin_routes(app: FastAPI, state: Any) -> None:
    env = state.spec.serving.admin_token_env

    @app.get("/v1/quarantine", tags=["admin"])
    async def quarantine_list(request: Request, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002
        require_token(request, env)
        return await asyncio.to_thread(q.list_quarantine, state.ws, include_decided=all)

    @app.get("/v1/quarantine/{batch_id}", tags=["admin"])
    async def quarantine_show(request: Request, batch_id: str, limit: int = 50) -> dict[str, Any]:
        require_token(request, env)
        return await asyncio.to_thread(q.show_quarantine, state.ws, batch_id, limit=limit)

    @app.post("/v1/quarantine/{batch_id}/release", tags=["admin"])
    async def quarantine_release(request: Request, batch_id: str, body: Decision) -> dict[str, Any]:
        require_token(request, env)
        return await asyncio.to_thread(q.release, state.ws, state.spec, batch_id, actor=body.actor or "http",
                                       reason=body.reason)

    @app.post("/v1/quarantine/{batch_id}/drop", tags=["admin"])
    async def quarantine_drop(request: Request, batch_id: str, body: Decision) -> dict[str, Any]:
        require_token(request, env)
        return await asyncio.to_thread(q.drop, state.ws, batch_id, actor=body.actor or "http", reason=body.reason)

    async def decide(request: Request, version: str, body: Decision, decision: str) -> dict[str, Any]:
        require_token(request, env)
        registry = Registry.for_spec(state.ws, state.spec)
        act = registry.approve if decision == "approve" else registry.reject
        return jsonable_encoder(await asyncio.to_thread(act, version, actor=body.actor or "http", reason=body.reason))

    @app.post("/v1/admin/models/{version}/approve", tags=["admin"],
              summary="Approve a model version for the stages the spec gates")
    async def model_approve(request: Request, version: str, body: Decision) -> dict[str, Any]:
        return await decide(request, version, body, "approve")

    @app.post("/v1/admin/models/{version}/reject", tags=["admin"],
              summary="Reject a model version: no canary or production until approved again")
    async def model_reject(request: Request, version: str, body: Decision) -> dict[str, Any]:
        return await decide(request, version, body, "reject")
