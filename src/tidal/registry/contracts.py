"""API contracts: what every client of an API version may send and will get back.

The first model promoted under an API version freezes its contract (inputs with their
types and whether they are required, and the response fields). A later model version may
serve that API version only if it accepts every request valid under the contract and
answers with the same fields:

- every contract input is still accepted, with the same type or a wider one
  (boolean -> numeric -> categorical; never the other way);
- an input the contract lets clients omit stays optional;
- a new input must be optional (it gets a default: null);
- the task, target and positive class (so the response fields and their meaning) are the same.

A breaking change needs a new API version: ``tidal promote N --new-api`` freezes the next
one (``/v2``, ...) from version N's signature, in the same transaction as the promotion. The
production version it replaces goes on answering the old API's clients (the old contract
records it as ``served_by``) until ``tidal contract retire`` ends that API; a server answers
a retired API's requests with 410 Gone, naming the newest. Only the predict endpoint is
versioned this way; the other routes (feedback, ingest, runs, models) stay under ``/v1``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from tidal.errors import InvalidArgument, NotFound, Problem, StateError
from tidal.infra.metadata import contracts, now
from tidal.infra.workspace import Workspace

API_VERSION = "v1"
RESPONSE_FIELDS = ["prediction_id", "prediction", "probability", "decision"]
# a value of the left type is always a valid value of the right one
_WIDENS = {("boolean", "numeric"), ("boolean", "categorical"), ("numeric", "categorical")}


def contract_from_signature(signature: dict[str, Any], *, api: str = API_VERSION) -> dict[str, Any]:
    inputs = {name: {"type": f["type"], "required": not f["nullable"]}
              for name, f in signature.get("inputs", {}).items()}
    return {"api": api, "task": signature.get("task"), "target": signature.get("target"),
            "positive_class": signature.get("positive_class"), "inputs": inputs, "response": RESPONSE_FIELDS}


def breaks(contract: dict[str, Any], signature: dict[str, Any]) -> list[Problem]:
    """Every way a model with ``signature`` would break clients of ``contract``."""
    problems = []
    for key in ("task", "target", "positive_class"):
        if contract.get(key) != signature.get(key):
            problems.append(Problem(key, f"the contract's {key} is {contract.get(key)!r}, the model's "
                                         f"{signature.get(key)!r}: the response would change meaning",
                                    "serve this model under a new API version"))
    inputs = signature.get("inputs", {})
    for name, spec in contract["inputs"].items():
        model = inputs.get(name)
        if model is None:
            continue  # the model ignores it: old clients may still send it
        if model["type"] != spec["type"] and (spec["type"], model["type"]) not in _WIDENS:
            problems.append(Problem(f"inputs.{name}", f"type narrows from {spec['type']} to {model['type']}: "
                                                      "requests valid under the contract would be refused",
                                    "keep the type, widen it, or serve under a new API version"))
        if not spec["required"] and not model["nullable"]:
            problems.append(Problem(f"inputs.{name}", "clients may omit it under the contract, the model requires it",
                                    "mark it nullable in the spec"))
    for name, model in inputs.items():
        if name not in contract["inputs"] and not model["nullable"]:
            problems.append(Problem(f"inputs.{name}", "a new input is required, so old clients' requests would fail",
                                    "make the new input nullable (it gets a default of null)"))
    return problems


def api_number(api: str) -> int:
    return int(api[1:])


def all_contracts(ws: Workspace) -> list[dict[str, Any]]:
    """Every API version's contract, oldest first."""
    return sorted((r["contract"] for r in ws.store.select(sa.select(contracts))), key=lambda c: api_number(c["api"]))


def stored(ws: Workspace, api: str | None = None) -> dict[str, Any] | None:
    """The contract of ``api``, or of the newest API version when None; None if there is none."""
    if api is None:
        every = all_contracts(ws)
        return every[-1] if every else None
    rows = ws.store.select(sa.select(contracts).where(contracts.c.api == api))
    return rows[0]["contract"] if rows else None


def check(ws: Workspace, signature: dict[str, Any], *, api: str | None = None) -> list[Problem]:
    """Every way ``signature`` breaks the contract of ``api`` (default: the newest API version)."""
    contract = stored(ws, api)
    return [] if contract is None else breaks(contract, signature)


def breaking(version: int, api: str, problems: list[Problem]) -> StateError:
    """The refusal of model ``version``, which breaks the ``api`` contract in ``problems``, with the ways out."""
    return StateError(f"model version {version} breaks the /{api} contract", problems=problems,
                      fix=f"make the model keep it (`tidal contract check {version}` explains each break), or promote "
                          f"it with --new-api to publish it under a new API version: /{api}'s clients stay on the "
                          "version in production")


Write = tuple[sa.Table, Any, dict[str, Any]]  # a row to insert (where None) or update, for MetadataStore.set_stages


def enforce(ws: Workspace, signature: dict[str, Any], *, version: int, new_api: bool = False,
            production: int | None = None) -> list[Write]:
    """Refuse a model that breaks the newest API version's contract; return the contract writes
    that go with its promotion (in the same transaction): the first contract, frozen from it, or
    with ``new_api`` the next API version's, the old one then answered by ``production``."""
    contract = stored(ws)
    if contract is None:
        return [(contracts, None, {"api": API_VERSION, "contract": contract_from_signature(signature, api=API_VERSION),
                                   "from_version": version, "created_at": now()})]
    api = contract["api"]
    problems = breaks(contract, signature)
    if not new_api:
        if problems:
            raise breaking(version, api, problems)
        return []
    if not problems:
        raise StateError(f"model version {version} keeps the /{api} contract: a new API version is for a breaking "
                         "change only", fix="promote it without --new-api")
    if production is None:
        raise StateError(f"no version is in production to go on answering /{api}'s clients",
                         fix=f"promote a version that keeps /{api} first, or change the model to keep it")
    following = f"v{api_number(api) + 1}"
    return [(contracts, contracts.c.api == api, {"contract": dict(contract, served_by=production)}),
            (contracts, None, {"api": following, "contract": contract_from_signature(signature, api=following),
                               "from_version": version, "created_at": now()})]


def retire(ws: Workspace, api: str, *, actor: str, reason: str) -> dict[str, Any]:
    """End an older API version: its requests are answered 410 Gone, and its pinned version is free."""
    contract = stored(ws, api)
    if contract is None:
        raise NotFound(f"there is no /{api} API version", fix="see `tidal contract list`")
    if contract.get("served_by") is None:
        raise StateError(f"/{api} is the newest API version; only an older one can be retired")
    if contract.get("retired"):
        raise StateError(f"/{api} was retired already ({contract['retired']['reason']})")
    if not (reason or "").strip():
        raise InvalidArgument("retiring an API version needs a reason, for the audit trail", fix="pass --reason WHY")
    contract = dict(contract, retired={"at": now().isoformat(), "actor": actor, "reason": reason.strip()})
    ws.store.update(contracts, contracts.c.api == api, {"contract": contract})
    return contract


def pinned(every: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Of the contracts ``every`` (:func:`all_contracts`), the older API versions still answered,
    each with the model version that answers it."""
    return {c["api"]: c["served_by"] for c in every if c.get("served_by") is not None and not c.get("retired")}


def describe(contract: dict[str, Any]) -> str:
    return json.dumps(contract, indent=2)
