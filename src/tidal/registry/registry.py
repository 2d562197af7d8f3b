"""The model registry: versions, stages (candidate, production, archived), approvals, lineage and an audit trail."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from tidal.errors import InvalidArgument, ModelNotFound, StateError
from tidal.infra.actor import current_actor
from tidal.infra.metadata import model_versions, now, stage_events
from tidal.infra.workspace import Workspace
from tidal.registry import approval, contracts
from tidal.registry.bundle import Bundle, load_bundle
from tidal.registry.lineage import version_lineage

# shadow: scores a copy of the traffic, answers nobody; canary: answers a sticky share of it
STAGES = ("candidate", "shadow", "canary", "production", "archived")


class Registry:
    """Model versions of one workspace.

    ``approval_required_for`` (the spec's ``registry.approval_required_for``) lists the stages a
    version may enter only once a person has approved it.
    """

    def __init__(self, ws: Workspace, *, approval_required_for: Sequence[str] = ()) -> None:
        self.ws = ws
        self.approval_required_for = tuple(approval_required_for)

    @classmethod
    def for_spec(cls, ws: Workspace, spec: Any) -> "Registry":
        """The registry of ``ws`` under ``spec``'s policy (its ``registry.approval_required_for``):
        what anything that moves versions between stages must use. ``Registry(ws)`` alone enforces
        rejections only, which suits readers (load, resolve, lineage)."""
        return cls(ws, approval_required_for=spec.registry.approval_required_for)

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
                stage: str = "production", new_api: bool = False) -> dict[str, Any]:
        """Move a version to ``stage`` (production, canary or shadow); the version it replaces
        there steps down (production is archived; a canary or shadow goes back to candidate).

        ``new_api``: the version breaks the newest API version's contract on purpose; its promotion
        to production publishes the next API version, and the production version it replaces goes
        on answering the old one (see :mod:`tidal.registry.contracts`)."""
        if stage not in ("production", "canary", "shadow"):
            raise StateError(f"cannot promote to {stage!r}", fix="use production, canary or shadow")
        if new_api and stage != "production":
            raise StateError("a new API version is published by a promotion to production",
                             fix="promote it to production with --new-api")
        row = self.resolve(version)
        if row["stage"] == stage:
            raise StateError(f"model version {row['version']} is already in {stage}")
        if row["stage"] == "production":
            raise StateError(f"model version {row['version']} is in production", fix="promote another version instead")
        self.check_approval(row["version"], stage)
        # verify the bundle, and that it keeps the API's contract, before it can serve
        bundle = load_bundle(row["bundle_path"], expected_manifest_sha256=row["manifest_sha256"])
        current = self.ws.store.in_stage(stage)
        writes = contracts.enforce(self.ws, bundle.signature, version=row["version"], new_api=new_api,
                                   production=current["version"] if current and new_api else None)
        if new_api:  # writes: the old contract (now served_by the current version), then the new one
            (_, _, old), (_, _, new) = writes
            reason = (f"{reason} (publishes /{new['api']}; version {current['version']} goes on answering "  # type: ignore[index]
                      f"/{old['contract']['api']})")
        changes: list[tuple[int, str | None, str]] = []
        if current is not None:
            changes.append((current["version"], stage, "archived" if stage == "production" else "candidate"))
        changes.append((row["version"], row["stage"], stage))
        self.ws.store.set_stages(changes, actor=current_actor(actor), reason=reason, also=writes)
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
        decisions = self.ws.store.approvals(previous["version"])
        if decisions and decisions[-1]["decision"] == "rejected":  # it served before, but a person has said no since
            last = decisions[-1]
            raise approval.ApprovalRequired(
                f"cannot roll back to model version {previous['version']}: it was rejected by {last['actor']} "
                f"({last['reason']})", fix="promote an approved version instead", version=previous["version"])
        bundle = load_bundle(previous["bundle_path"], expected_manifest_sha256=previous["manifest_sha256"])
        problems = contracts.check(self.ws, bundle.signature)
        if problems:  # it served before a new API version was published: it cannot answer that one's clients
            api = contracts.stored(self.ws)["api"]  # type: ignore[index]
            raise StateError(f"cannot roll back to model version {previous['version']}: it breaks the /{api} contract "
                             "published since it served", problems=problems,
                             fix=f"promote a version that keeps /{api} instead")
        self.ws.store.set_stages([(current["version"], "production", "archived"),
                                  (previous["version"], previous["stage"], "production")],
                                 actor=current_actor(actor), reason=reason)
        return self.resolve(previous["version"])

    # approvals ---------------------------------------------------------------------------
    def approve(self, version: int | str, *, reason: str, actor: str | None = None) -> dict[str, Any]:
        """Sign a version off for the stages that need approval; returns its approval status."""
        return self._decide(version, "approved", reason=reason, actor=actor)

    def reject(self, version: int | str, *, reason: str, actor: str | None = None) -> dict[str, Any]:
        """Refuse a version: it may not answer traffic (canary or production) until approved again."""
        row = self.resolve(version)
        if row["stage"] in approval.GATED_STAGES:
            step = "`tidal rollback` or promote another version" if row["stage"] == "production" \
                else "`tidal withdraw canary`"
            raise StateError(f"model version {row['version']} is serving in {row['stage']}; take it out of traffic "
                             "before rejecting it", fix=f"run {step}, then reject it", version=row["version"])
        for api, served_by in contracts.pinned(contracts.all_contracts(self.ws)).items():
            if served_by == row["version"]:
                raise StateError(f"model version {row['version']} answers the /{api} API's clients; retire that API "
                                 "before rejecting it", fix=f"run `tidal contract retire {api} --reason WHY`, then "
                                 "reject it", version=row["version"])
        return self._decide(row["version"], "rejected", reason=reason, actor=actor)

    def _decide(self, version: int | str, decision: str, *, reason: str, actor: str | None) -> dict[str, Any]:
        if not (reason or "").strip():
            what = "an approval" if decision == "approved" else "a rejection"
            raise InvalidArgument(f"{what} needs a reason, for the audit trail",
                                  fix="pass --reason WHY (HTTP: a non-empty 'reason')")
        row = self.resolve(version)
        self.ws.store.record_approval(row["version"], decision, actor=current_actor(actor), reason=reason.strip())
        return self.approval(row["version"])

    def approval(self, version: int | str) -> dict[str, Any]:
        """The version's approval status (approved, rejected, pending or not_required) and its decisions."""
        number = self.resolve(version)["version"]
        return approval.status(number, self.ws.store.approvals(number), self.approval_required_for)

    def check_approval(self, version: int, stage: str) -> None:
        """Raise :class:`ApprovalRequired` unless ``version`` may enter ``stage``; ``--force`` never skips this."""
        approval.check(version, stage, self.ws.store.approvals(version), self.approval_required_for)

    # audit and lineage ---------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        """The audit trail, oldest first: every stage change and every approval decision, each with
        ``event`` (``stage``, ``approved`` or ``rejected``), who (``actor``), why (``reason``) and when (``at``).
        Approval entries have no ``from_stage``/``to_stage``."""
        stages = [{"event": "stage", **e} for e in self.ws.store.stage_history()]
        decisions = [{"event": d["decision"], "id": None, "version": d["version"], "from_stage": None,
                      "to_stage": None, "actor": d["actor"], "reason": d["reason"], "at": d["at"]}
                     for d in self.ws.store.approvals()]
        return sorted(stages + decisions, key=lambda e: e["at"])  # stable: a stage change first on a tie

    def lineage(self, version: int | str) -> dict[str, Any]:
        """Where a version came from (run, data versions, spec hash, code version, training rows, the
        champion it was compared with), its bundle's manifest hash, approval status and audit trail."""
        row = self.resolve(version)
        return version_lineage(self.ws.store, row, trail=self.history(), approval=self.approval(row["version"]))
