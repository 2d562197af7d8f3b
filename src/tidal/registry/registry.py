"""The model registry: versions, stages (candidate, production, archived) and an audit trail."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from tidal.errors import ModelNotFound, StateError
from tidal.infra.actor import current_actor
from tidal.infra.metadata import model_versions, now, stage_events
from tidal.infra.workspace import Workspace
from tidal.registry import contracts
from tidal.registry.bundle import Bundle, load_bundle

# shadow: scores a copy of the traffic, answers nobody; canary: answers a sticky share of it
STAGES = ("candidate", "shadow", "canary", "production", "archived")


class Registry:
    """Model versions of one workspace."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def register(self, *, run_id: str, bundle_path: str, manifest_sha256: str, metrics: dict[str, Any],
                 actor: str | None = None) -> int:
        store = self.ws.store
        with store.engine.begin() as conn:
            latest = conn.execute(sa.select(sa.func.max(model_versions.c.version))).scalar()
            version = (latest or 0) + 1
            conn.execute(model_versions.insert().values(
                version=version, run_id=run_id, stage="candidate", bundle_path=bundle_path,
                manifest_sha256=manifest_sha256, metrics=json.dumps(metrics, default=float),
                created_at=now()))
            conn.execute(stage_events.insert().values(
                version=version, from_stage=None, to_stage="candidate", actor=current_actor(actor),
                reason=f"registered from run {run_id}", at=now()))
        return version

    def list(self) -> list[dict[str, Any]]:
        return self.ws.store.versions()

    def resolve(self, version: int | str) -> dict[str, Any]:
        """A version number, 'latest' (the newest) or 'production'."""
        if version == "latest":
            rows = self.list()
            if not rows:
                raise ModelNotFound("no model version is registered yet", fix="run `tidal train` first")
            return rows[-1]
        if version == "production":
            row = self.ws.store.production()
            if row is None:
                raise ModelNotFound("no model version is in production", fix="run `tidal promote latest`")
            return row
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise ModelNotFound(f"model version {version!r} is not a number, 'latest' or 'production'") from None
        try:
            return self.ws.store.version(number)
        except LookupError:
            raise ModelNotFound(f"model version {number} does not exist",
                                fix="see `tidal models` for the registered versions") from None

    def load(self, version: int | str) -> tuple[dict[str, Any], Bundle]:
        row = self.resolve(version)
        return row, load_bundle(row["bundle_path"], expected_manifest_sha256=row["manifest_sha256"])

    def promote(self, version: int | str, *, actor: str | None = None, reason: str = "promoted",
                stage: str = "production") -> dict[str, Any]:
        """Move a version to ``stage`` (production, canary or shadow); the version it replaces
        there steps down (production is archived; a canary or shadow goes back to candidate)."""
        if stage not in ("production", "canary", "shadow"):
            raise StateError(f"cannot promote to {stage!r}", fix="use production, canary or shadow")
        row = self.resolve(version)
        if row["stage"] == stage:
            raise StateError(f"model version {row['version']} is already in {stage}")
        if row["stage"] == "production":
            raise StateError(f"model version {row['version']} is in production", fix="promote another version instead")
        # verify the bundle, and that it keeps the API's contract, before it can serve
        bundle = load_bundle(row["bundle_path"], expected_manifest_sha256=row["manifest_sha256"])
        contracts.enforce(self.ws, bundle.signature, version=row["version"])
        changes: list[tuple[int, str | None, str]] = []
        current = self.ws.store.in_stage(stage)
        if current is not None:
            changes.append((current["version"], stage, "archived" if stage == "production" else "candidate"))
        changes.append((row["version"], row["stage"], stage))
        self.ws.store.set_stages(changes, actor=current_actor(actor), reason=reason)
        return self.resolve(row["version"])

    def withdraw(self, stage: str, *, actor: str | None = None, reason: str) -> dict[str, Any] | None:
        """Take the canary or shadow version out of traffic (back to candidate); None if there is none."""
        if stage not in ("canary", "shadow"):
            raise StateError(f"only a canary or a shadow can be withdrawn, not {stage!r}",
                             fix="use `tidal rollback` for production")
        row = self.ws.store.in_stage(stage)
        if row is None:
            return None
        self.ws.store.set_stages([(row["version"], stage, "candidate")], actor=current_actor(actor), reason=reason)
        return self.resolve(row["version"])

    def rollback(self, *, actor: str | None = None, reason: str = "rollback") -> dict[str, Any]:
        """Put back the version that was in production before the current one."""
        current = self.ws.store.production()
        if current is None:
            raise StateError("nothing is in production, so there is nothing to roll back")
        history = [e for e in self.ws.store.stage_history() if e["to_stage"] == "production"
                   and e["version"] != current["version"]]
        if not history:
            raise StateError(f"model version {current['version']} is the only one ever in production",
                             fix="promote another version instead")
        previous = self.resolve(history[-1]["version"])
        bundle = load_bundle(previous["bundle_path"], expected_manifest_sha256=previous["manifest_sha256"])
        contracts.enforce(self.ws, bundle.signature, version=previous["version"])
        self.ws.store.set_stages([(current["version"], "production", "archived"),
                                  (previous["version"], previous["stage"], "production")],
                                 actor=current_actor(actor), reason=reason)
        return self.resolve(previous["version"])

    def history(self) -> list[dict[str, Any]]:
        return self.ws.store.stage_history()
