"""Approval: a person's sign-off before a model version may serve the stages the spec names.

A version's approval status is its newest decision (``approved`` or ``rejected``); without
one it is ``pending`` when the spec asks for approval, else ``not_required``. A rejected
version may not answer traffic (canary or production) whatever the spec says; a shadow
answers nobody, so it needs no approval. ``--force`` skips the guardrails, never this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidal.errors import ApprovalRequired

__all__ = ["ApprovalRequired", "GATED_STAGES", "check", "status"]

# stages where a version answers traffic, and so where approval can be asked for
GATED_STAGES = ("canary", "production")


def status(version: int, decisions: list[dict[str, Any]], required_for: Sequence[str]) -> dict[str, Any]:
    """The approval status of ``version`` given its decisions (oldest first) and the spec's gated stages."""
    last = decisions[-1] if decisions else None
    state = last["decision"] if last else ("pending" if required_for else "not_required")
    return {"version": version, "status": state, "required_for": list(required_for),
            "by": last["actor"] if last else None, "reason": last["reason"] if last else None,
            "at": last["at"] if last else None,
            "decisions": [{k: d[k] for k in ("decision", "actor", "reason", "at")} for d in decisions]}


def check(version: int, stage: str, decisions: list[dict[str, Any]], required_for: Sequence[str]) -> None:
    """Refuse a move of ``version`` to ``stage`` that its approval status does not allow."""
    if stage not in GATED_STAGES:
        return
    last = decisions[-1] if decisions else None
    if last is not None and last["decision"] == "rejected":
        raise ApprovalRequired(
            f"model version {version} was rejected by {last['actor']} ({last['reason']}), so it cannot go to "
            f"{stage}", fix=f"promote another version; if the rejection no longer holds, run "
                            f"`tidal approve {version} --reason WHY` first", version=version, stage=stage)
    if stage in required_for and (last is None or last["decision"] != "approved"):
        raise ApprovalRequired(
            f"model version {version} needs approval before it can go to {stage} (the spec's "
            f"registry.approval_required_for lists {stage}; --force skips the guardrails, not approval)",
            fix=f"run `tidal approve {version} --reason WHY` (or POST /v1/admin/models/{version}/approve), "
                f"then promote it again", version=version, stage=stage)
