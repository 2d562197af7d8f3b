"""Request and response schemas of the HTTP API, generated from the spec.

Serving checks types and required fields; ranges and allowed values are not enforced at
serving time (an unseen category goes to the unknown bucket and shows up as drift), so a
shifted population is scored and monitored instead of refused.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from tidal.serving.columns import RecordColumns
from tidal.spec import Spec

_TYPES: dict[str, Any] = {"numeric": float, "categorical": str, "boolean": bool, "datetime": datetime}


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


def record_model(spec: Spec) -> type[BaseModel]:
    """One prediction input: every feature, typed; nullable features may be omitted.

    Lookup and history features are not inputs: the record carries the lookups' keys and the
    entity key (required) and, optionally, its event time, and the server fills them in.
    """
    fields: dict[str, Any] = {}
    for name, feat in spec.features.items():
        py = _TYPES[feat.type]
        desc = feat.description or f"{feat.type} feature"
        if feat.nullable:
            fields[name] = (py | None, Field(None, description=desc))
        else:
            fields[name] = (py, Field(description=desc))
    if spec.entity_key and spec.entity_key not in fields and spec.history:  # whose history the server adds
        fields[spec.entity_key] = (str, Field(description="Entity key: the server adds its history features."))
    elif spec.entity_key and spec.entity_key not in fields:
        fields[spec.entity_key] = (str | None, Field(None, description="Entity key (logged, not a feature)."))
    for key in spec.lookup_keys:  # the server joins the lookups' features itself, by these keys
        fields[key] = (str, Field(description="Lookup key: the server adds the lookups' features of this key."))
    if spec.lookups or spec.history:
        fields[spec.event_time] = (datetime | None, Field(None, description=(
            "When the row happens: lookups are read as of this time (default: now); history features are the "
            "entity's newest in the online store. Without a time zone, UTC.")))
    return create_model(_model_name(spec), __base__=_Record, **fields)


def _model_name(spec: Spec) -> str:
    return f"{spec.name.title().replace('-', '').replace('_', '')}Record"


def contract_record_model(spec: Spec, contract: dict[str, Any]) -> type[BaseModel]:
    """One prediction input of an older API version: the inputs its contract froze, each with
    its type and whether it is required (as the model version answering it was trained), plus
    the fields the server itself reads (the entity key, lookup keys, event time) as
    :func:`record_model` has them."""
    current = record_model(spec)
    fields: dict[str, Any] = {}
    for name, item in contract["inputs"].items():
        py = _TYPES[item["type"]]
        desc = f"{item['type']} feature (/{contract['api']} contract)"
        fields[name] = (py, Field(description=desc)) if item["required"] else (py | None, Field(None, description=desc))
    for name, info in current.model_fields.items():
        if name not in spec.features and name not in fields:
            fields[name] = (info.annotation, info)
    return create_model(f"{_model_name(spec)}{contract['api'].upper()}", __base__=_Record, **fields)


def record_decoder(model: type[BaseModel], *, columns_from: int | None = None,
                   ) -> Callable[[bytes], "list[dict[str, Any]] | RecordColumns | None"] | None:
    """A fast decoder of request bodies (one record object or an array of them) into the dicts
    ``model`` would give (its ``__dict__``), through a msgspec Struct with the model's fields
    and required/optional rules: no pydantic model per row. An array of at least
    ``columns_from`` records comes back column-wise instead, as :class:`RecordColumns` (the same
    values, no dict per record).

    msgspec is strict (no "1.5" for a number, no 1 for a bool), so it accepts a subset of what
    the model accepts; for anything else the decoder returns None and the caller validates
    with the model, which accepts it the same way or names every problem. Datetimes are
    decoded as text and parsed by pydantic, so they come out exactly as the model gives them.
    None when the model's fields do not map to msgspec types.
    """
    import msgspec

    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    datetimes = []
    for name, info in model.model_fields.items():
        if info.alias is not None or info.metadata:  # constraints or aliases: leave it to pydantic
            return None
        kind = info.annotation
        if kind in (datetime, datetime | None):
            datetimes.append(name)
            kind = str if kind is datetime else str | None
        fields.append((name, kind) if info.is_required() else (name, kind, info.default))
    try:
        # gc=False: the fields hold only numbers, text, booleans and None, so no cycle can form
        struct = msgspec.defstruct(model.__name__, fields, kw_only=True, gc=False)
        one, many = msgspec.json.Decoder(struct), msgspec.json.Decoder(list[struct])
    except (TypeError, ValueError):
        return None
    as_dict, to_datetime = msgspec.structs.asdict, TypeAdapter(datetime).validate_python
    as_tuple, names = msgspec.structs.astuple, [f[0] for f in fields]

    def decode(body: bytes) -> list[dict[str, Any]] | RecordColumns | None:
        try:
            if body.lstrip()[:1] == b"[":
                structs = many.decode(body)
                if columns_from is not None and len(structs) >= max(columns_from, 1):
                    batch = RecordColumns.from_rows(names, [as_tuple(r) for r in structs])
                    for name in datetimes:
                        batch.replace(name, [None if v is None else to_datetime(v) for v in batch.column(name)])
                    return batch
                records = [as_dict(r) for r in structs]
            else:
                records = [as_dict(one.decode(body))]
            for r in records if datetimes else ():
                for name in datetimes:
                    if r[name] is not None:
                        r[name] = to_datetime(r[name])
        except (msgspec.DecodeError, ValidationError):
            return None
        return records or None  # an empty array: the model's path says so

    return decode


def label_type(spec: Spec) -> Any:
    return float if spec.task == "regression" else str | int | bool


def feedback_model(spec: Spec) -> type[BaseModel]:
    return create_model("Feedback", __config__=ConfigDict(extra="forbid"),
                        prediction_id=(str, Field(min_length=1, description="Id returned by /v1/predict.")),
                        label=(label_type(spec), Field(description=f"The true value of {spec.target}.")))


class Prediction(BaseModel):
    prediction_id: str
    prediction: str | float = Field(description="Class at a 0.5 threshold, or the predicted value.")
    probability: float | None = Field(description="Probability of the positive class (binary only).")
    decision: str | float = Field(description="Business decision: the cost-optimal action, or the cost-adjusted value.")


class PredictResponse(BaseModel):
    model_version: int
    predictions: list[Prediction]


class FeedbackResponse(BaseModel):
    accepted: int
