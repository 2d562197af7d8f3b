"""Approval before the stages the spec gates, on SQLite and PostgreSQL: refusals that name the fix,
approve then promote, --force never bypassing it, rejection, rollback, the audit trail, the
alerts, and retraining that leaves a winning challenger awaiting approval."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.conftest import CHURN_SPEC, drop_postgres, postgres_url
from tests.registry.test_registry import _register
from tidal.errors import ApprovalRequired, InvalidArgument, ModelNotFound, StateError
from tidal.infra.metadata import alerts, now
from tidal.infra.workspace import Workspace
from tidal.project import Project
from tidal.registry.registry import Registry
from tidal.spec import parse_spec


def _registry(ws, *stages: str) -> Registry:
    return Registry(ws, approval_required_for=stages)


def _stages(registry: Registry) -> dict[int, str]:
    return {r["version"]: r["stage"] for r in registry.list()}


def test_promotion_to_a_gated_stage_is_refused_naming_the_version_and_the_fix(workspace):
    _register(workspace, 1)
    registry = _registry(workspace, "production")
    events_before = len(registry.history())
    with pytest.raises(ApprovalRequired) as err:
        registry.promote(1, actor="ana", reason="looks good")
    assert isinstance(err.value, StateError) and err.value.status_code == 409
    assert err.value.to_body()["error"]["code"] == "approval_required"
    assert "model version 1 needs approval before it can go to production" in err.value.message
    assert "tidal approve 1" in err.value.fix
    assert registry.approval(1)["status"] == "pending"
    assert _stages(registry) == {1: "candidate"}
    assert len(registry.history()) == events_before  # nothing was written


def test_approve_then_promote_and_the_audit_trail_records_who_and_why(workspace):
    _register(workspace, 1)
    registry = _registry(workspace, "production")
    status = registry.approve(1, actor="ana", reason="reviewed the fairness report")
    assert status["status"] == "approved" and status["by"] == "ana"
    assert status["reason"] == "reviewed the fairness report" and status["required_for"] == ["production"]
    row = registry.promote(1, actor="bob", reason="release 1")
    assert row["stage"] == "production"
    trail = [(e["event"], e["version"], e["to_stage"], e["actor"], e["reason"]) for e in registry.history()]
    assert trail == [("stage", 1, "candidate", "trainer", "registered from run run-0"),
                     ("approved", 1, None, "ana", "reviewed the fairness report"),
                     ("stage", 1, "production", "bob", "release 1")]
    assert all(e["at"].tzinfo is not None for e in registry.history())


def test_force_skips_the_guardrails_but_never_approval(workspace):
    _register(workspace, 1)
    project = Project(parse_spec(dict(CHURN_SPEC, registry={"approval_required_for": ["production"]})),
                      workspace=workspace)
    with pytest.raises(ApprovalRequired, match="--force skips the guardrails, not approval"):
        project.promote(1, force=True)
    assert project.registry.resolve(1)["stage"] == "candidate"
    project.approve(1, reason="signed off", actor="ana")
    assert project.promote(1, force=True, reason="urgent")["stage"] == "production"
    last = project.registry.history()[-1]
    assert last["to_stage"] == "production" and "guardrails skipped" in last["reason"]


def test_a_rejection_blocks_serving_stages_even_without_a_policy_until_approved_again(workspace):
    _register(workspace, 1)
    registry = _registry(workspace)  # no stage needs approval
    assert registry.approval(1)["status"] == "not_required"
    status = registry.reject(1, actor="carol", reason="leaks the target")
    assert status["status"] == "rejected" and status["by"] == "carol"
    for stage in ("production", "canary"):
        with pytest.raises(ApprovalRequired) as err:
            registry.promote(1, stage=stage)
        assert "rejected by carol (leaks the target)" in err.value.message and "tidal approve 1" in err.value.fix
    assert registry.promote(1, stage="shadow")["stage"] == "shadow"  # a shadow answers nobody
    registry.approve(1, actor="carol", reason="leak fixed upstream")
    assert registry.promote(1)["stage"] == "production"
    assert [d["decision"] for d in registry.approval(1)["decisions"]] == ["rejected", "approved"]


def test_canary_needs_approval_only_when_listed_and_canary_to_production_does_when_it_is(workspace):
    _register(workspace, 2)
    registry = _registry(workspace, "production")
    assert registry.promote(1, stage="canary")["stage"] == "canary"
    with pytest.raises(ApprovalRequired, match="model version 1 needs approval before it can go to production"):
        registry.promote(1, stage="production")
    assert _stages(registry)[1] == "canary"
    registry.approve(1, actor="ana", reason="canary was clean")
    assert registry.promote(1)["stage"] == "production"
    canary_gated = _registry(workspace, "canary")
    with pytest.raises(ApprovalRequired, match="go to canary"):
        canary_gated.promote(2, stage="canary")


def test_rollback_to_an_approved_version_is_allowed_but_not_to_a_rejected_one(workspace):
    _register(workspace, 2)
    registry = _registry(workspace, "production")
    for v in (1, 2):
        registry.approve(v, actor="ana", reason=f"release {v}")
        registry.promote(v)
    assert registry.rollback(actor="ops", reason="v2 misbehaves")["version"] == 1
    assert _stages(registry) == {1: "production", 2: "archived"}
    registry.promote(2, reason="v2 fixed")
    registry.reject(1, actor="ana", reason="v1 found biased")
    with pytest.raises(ApprovalRequired, match="cannot roll back to model version 1: it was rejected by ana"):
        registry.rollback(reason="again")
    assert _stages(registry) == {1: "archived", 2: "production"}


def test_reject_refuses_a_serving_version_and_decisions_need_a_reason(workspace):
    _register(workspace, 1)
    registry = _registry(workspace)
    registry.promote(1)
    with pytest.raises(StateError) as err:
        registry.reject(1, reason="too slow")
    assert "serving in production" in err.value.message and "tidal rollback" in err.value.fix
    assert registry.approval(1)["decisions"] == []
    with pytest.raises(InvalidArgument, match="an approval needs a reason"):
        registry.approve(1, reason="   ")
    with pytest.raises(ModelNotFound):
        registry.approve(7, reason="no such version")


def test_a_decision_settles_the_open_approval_alerts_of_that_version_only(workspace):
    _register(workspace, 2)
    store = workspace.store
    for v in (1, 2):
        store.insert(alerts, {"kind": "approval", "message": f"v{v} awaits approval", "details": {},
                              "model_version": v, "resolved": False, "at": now()})
    store.insert(alerts, {"kind": "drift", "message": "drift", "details": {}, "model_version": 1,
                          "resolved": False, "at": now()})
    _registry(workspace, "production").approve(1, actor="ana", reason="ok")
    open_alerts = {(a["kind"], a["model_version"]) for a in store.select(sa.select(alerts))
                   if not a["resolved"]}
    assert open_alerts == {("approval", 2), ("drift", 1)}


def test_an_existing_workspace_gets_the_approvals_table(workspace):
    _register(workspace, 1)
    with workspace.store.engine.begin() as conn:  # a workspace made before approvals existed
        conn.execute(sa.text("DROP TABLE approvals"))
    reopened = Workspace(workspace.root, metadata_url=workspace.metadata_url).create()
    try:
        assert "approvals" in sa.inspect(reopened.store.engine).get_table_names()
        registry = _registry(reopened, "production")
        assert registry.approval(1)["status"] == "pending"
        registry.approve(1, actor="ana", reason="after the upgrade")
        assert registry.promote(1)["stage"] == "production"
        assert [e["event"] for e in registry.history()] == ["stage", "approved", "stage"]
    finally:
        reopened.close()


# ---------------------------------------------------------------------------------------------
# retraining and lineage with real training, on SQLite and PostgreSQL


@pytest.fixture(params=["sqlite", "postgres"])
def metadata_url(request):
    url = postgres_url() if request.param == "postgres" else None
    yield url
    if url:
        drop_postgres(url)


def test_retrain_leaves_a_winning_challenger_awaiting_approval_with_an_alert(tmp_path, metadata_url):
    from tests.serving.conftest import make_project
    from tests.updating.test_retrain import _log_traffic

    workspace = {"path": ".tidal", "metadata_url": metadata_url} if metadata_url else {"path": ".tidal"}
    project = make_project(tmp_path / "p", promote=False, versions=0, workspace=workspace,
                           registry={"approval_required_for": ["production"]},
                           retraining={"min_new_labels": 300})
    try:
        project.train(params={"learning_rate": 1e-4})  # a weak champion, so that the challenger wins
        project.approve(1, reason="baseline release", actor="ana")
        project.promote(1)
        _log_traffic(project, 400)
        result = project.retrain()
        assert result["retrained"] and result["challenger"] == 2
        assert result["challenger_holdout"]["cost_per_row"] < result["champion_holdout"]["cost_per_row"]
        assert result["awaiting_approval"] is True and result["promoted"] is False
        assert "tidal approve 2" in result["message"]
        assert project.registry.resolve("production")["version"] == 1  # the champion keeps serving
        assert project.registry.resolve(2)["stage"] == "candidate"
        assert project.registry.approval(2)["status"] == "pending"
        store = project.ws.store
        [alert] = store.select(sa.select(alerts).where(alerts.c.resolved.is_(False)))
        assert alert["kind"] == "approval" and alert["model_version"] == 2
        retrain_run = [r for r in project.runs() if r["kind"] == "retrain"][0]
        assert alert["details"] == {"challenger": 2, "champion": 1, "run_id": retrain_run["run_id"]}
        # lineage: the champion retraining compared it with, and its run's records
        lineage = project.model_lineage(2)
        assert lineage["champion"]["version"] == 1 and lineage["champion"]["compared_by"] == "retrain"
        assert lineage["champion"]["rows"] == result["holdout_rows"]
        assert lineage["data_versions"]["labels"] is not None and lineage["run"]["kind"] == "retrain"
        assert lineage["approval"]["status"] == "pending"
        # a person approves (the alert is settled) and promotes
        project.approve(2, reason="reviewed the challenge", actor="bob")
        assert store.select(sa.select(alerts).where(alerts.c.resolved.is_(False))) == []
        assert project.promote(2, reason="challenger approved", actor="bob")["stage"] == "production"
        events = [(e["event"], e["version"], e["actor"]) for e in project.registry.history()][-3:]
        assert events == [("approved", 2, "bob"), ("stage", 1, "bob"), ("stage", 2, "bob")]
    finally:
        project.close()
