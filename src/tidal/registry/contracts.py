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

A breaking change needs a new API version; old clients keep working.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from tidal.errors import Problem, StateError
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


def stored(ws: Workspace, api: str = API_VERSION) -> dict[str, Any] | None:
    rows = ws.store.select(sa.select(contracts).where(contracts.c.api == api))
    return rows[0]["contract"] if rows else None


def check(ws: Workspace, signature: dict[str, Any], *, version: int, api: str = API_VERSION) -> list[Problem]:
    contract = stored(ws, api)
    return [] if contract is None else breaks(contract, signature)


def enforce(ws: Workspace, signature: dict[str, Any], *, version: int, api: str = API_VERSION) -> None:
    """Refuse a model that breaks the API's contract; freeze the contract on the first promotion."""
    contract = stored(ws, api)
    if contract is None:
        ws.store.insert(contracts, {"api": api, "contract": contract_from_signature(signature, api=api),
                                    "from_version": version, "created_at": now()})
        return
    problems = breaks(contract, signature)
    if problems:
        raise StateError(f"model version {version} breaks the /{api} contract", problems=problems,
                         fix="see `tidal contract check` for details")


def describe(contract: dict[str, Any]) -> str:
    return json.dumps(contract, indent=2)
