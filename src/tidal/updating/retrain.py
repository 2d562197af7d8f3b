"""Retraining: when the spec's policy fires, train a challenger on the newest data, compare it
with the champion on the most recent labelled rows by business cost, and promote it only if
it is better, passes the guardrails and keeps the spec's fairness limits on those rows.

When the spec asks for approval before production, a winning challenger is left as a
candidate awaiting a person's approval, with an ``approval`` alert; the champion keeps serving."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import sqlalchemy as sa

from tidal.errors import StateError
from tidal.infra.metadata import alerts, now, runs
from tidal.infra.workspace import Workspace
from tidal.registry.bundle import Bundle
from tidal.registry.registry import Registry
from tidal.spec import Spec
from tidal.training.dataset import labelled_log, labels_array, split_holdout
from tidal.training.trainer import decide, train
from tidal.updating.guardrails import check_fairness, check_guardrails


def _open_alerts(ws: Workspace) -> list[dict[str, Any]]:
    return ws.store.select(sa.select(alerts).where(alerts.c.resolved.is_(False)).order_by(alerts.c.id))


def _last_training(ws: Workspace) -> dict[str, Any] | None:
    rows = ws.store.select(sa.select(runs).where(runs.c.kind.in_(["train", "retrain"]),
                                                 runs.c.status == "finished").order_by(runs.c.started_at.desc()).limit(1))
    return rows[0] if rows else None


def _labelled_count(ws: Workspace, spec: Spec, versions: dict[str, Any]) -> int:
    log = labelled_log(ws, spec, predictions_version=versions.get("predictions"),
                       labels_version=versions.get("labels"))
    return 0 if log is None else log.num_rows


def triggers(ws: Workspace, spec: Spec) -> list[str]:
    """Why the policy says to retrain now (empty: it does not)."""
    policy = spec.retraining
    reasons = []
    for alert in _open_alerts(ws):
        if (alert["kind"] == "drift" and policy.on_drift) or (alert["kind"] == "performance" and policy.on_performance):
            reasons.append(f"{alert['kind']} alert: {alert['message']}")
    last = _last_training(ws)
    now_versions = {"predictions": ws.lake.version("predictions"), "labels": ws.lake.version("labels")}
    new = _labelled_count(ws, spec, now_versions) - (_labelled_count(ws, spec, last["data_versions"]) if last else 0)
    if new >= policy.min_new_labels:
        reasons.append(f"{new} new labelled rows (policy: {policy.min_new_labels})")
    return reasons


def _cost_on(bundle: Bundle, spec: Spec, table: Any) -> dict[str, Any]:
    scores = bundle.booster.predict(bundle.pipeline.transform_arrow(table))
    return decide(spec, bundle.signature, labels_array(table, spec), scores)


def retrain(ws: Workspace, spec: Spec, *, force: bool = False) -> dict[str, Any]:
    """Apply the retraining policy once; return what it decided and why."""
    reasons = triggers(ws, spec)
    if force:
        reasons.append("forced")
    if not reasons:
        return {"retrained": False, "promoted": False, "reasons": [], "message": "the policy did not fire"}
    policy = spec.retraining
    registry = Registry.for_spec(ws, spec)
    champion_row, champion = registry.load("production")
    versions = {"events": ws.lake.version("events"), "predictions": ws.lake.version("predictions"),
                "labels": ws.lake.version("labels"), "holdout_share": policy.holdout_share}
    log = labelled_log(ws, spec, predictions_version=versions["predictions"], labels_version=versions["labels"])
    if log is None or log.num_rows < spec.monitoring.min_labels:
        raise StateError("not enough labelled predictions to compare a challenger with the champion",
                         fix=f"send at least {spec.monitoring.min_labels} labels through /v1/feedback")
    _, holdout = split_holdout(log, policy.holdout_share)
    result = train(ws, spec, data_versions=versions, kind="retrain", actor="tidal-retrain")
    challenger_row, challenger = registry.load(result.version)
    champ = _cost_on(champion, spec, holdout)
    chall = _cost_on(challenger, spec, holdout)
    needed = champ["cost_per_row"] - abs(champ["cost_per_row"]) * policy.min_improvement
    better = chall["cost_per_row"] < needed
    sample = holdout.select([c for c in spec.model_features if c in holdout.column_names]).slice(0, 50).to_pylist()
    failures = check_guardrails(spec, challenger, chall, sample)
    failures += check_fairness(spec, challenger, holdout, labels_array(holdout, spec))  # on the same recent rows
    decision = {"retrained": True, "reasons": reasons, "champion": champion_row["version"],
                "challenger": result.version, "holdout_rows": holdout.num_rows,
                "champion_holdout": champ, "challenger_holdout": chall, "guardrail_failures": failures,
                "promoted": False, "awaiting_approval": False}
    if not better:
        decision["message"] = (f"kept version {champion_row['version']}: challenger cost per row "
                               f"{chall['cost_per_row']:.4f} is not below the champion's {champ['cost_per_row']:.4f}")
    elif failures:
        decision["message"] = f"kept version {champion_row['version']}: challenger breaks guardrails: " + "; ".join(failures)
    elif not policy.auto_promote:
        decision["message"] = f"challenger {result.version} wins; awaiting a person (auto_promote is off)"
    elif "production" in spec.registry.approval_required_for:
        decision["awaiting_approval"] = True
        decision["message"] = (f"challenger {result.version} wins (cost per row {chall['cost_per_row']:.4f} vs "
                               f"{champ['cost_per_row']:.4f}) and awaits approval before production; version "
                               f"{champion_row['version']} keeps serving: run `tidal approve {result.version} "
                               f"--reason WHY`, then `tidal promote {result.version}`")
    else:
        registry.promote(result.version, actor="tidal-retrain", reason=(
            f"challenger cost per row {chall['cost_per_row']:.4f} < champion {champ['cost_per_row']:.4f} "
            f"on {holdout.num_rows} recent labelled rows"))
        decision["promoted"] = True
        decision["message"] = (f"promoted version {result.version} over {champion_row['version']}: cost per row "
                               f"{chall['cost_per_row']:.4f} vs {champ['cost_per_row']:.4f}")
    with ws.store.engine.begin() as conn:
        conn.execute(alerts.update().where(alerts.c.resolved.is_(False)).values(resolved=True))
        if decision.get("awaiting_approval"):  # raised after the others are settled: it stays open until decided
            conn.execute(alerts.insert().values(kind="approval", message=decision["message"], details=json.dumps(
                {"challenger": result.version, "champion": champion_row["version"], "run_id": result.run_id}),
                model_version=result.version, resolved=False, at=now()))
    ws.store.update(runs, runs.c.run_id == result.run_id,
                    {"metrics": {**result.metrics, "challenge": _jsonable(decision)}, "ended_at": now()})
    return decision


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
