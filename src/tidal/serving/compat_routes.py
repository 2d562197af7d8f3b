"""What clients already speak: the Open Inference Protocol v2 (KServe V2, Triton's HTTP API)
and MLflow's ``/invocations`` scoring formats, beside tidal's own ``/v1``.

Both turn their payload into records, validate them with the same generated record model
as ``/v1/predict``, and score through :meth:`ServerState.score`, so the contract, the
prediction log and the metrics are the same whichever protocol a client uses.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

import tidal
from tidal.errors import NotFound, NotReady, Problem, RequestValidationError
from tidal.serving.columns import COLUMNS_FROM, RecordColumns
from tidal.spec import Spec

_OIP_TYPES = {"numeric": "FP64", "categorical": "BYTES", "boolean": "BOOL", "datetime": "BYTES"}
_NUMERIC = {"FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"}
_NUMPY = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "INT8": "i1", "UINT64": "<u8",
          "UINT32": "<u4", "UINT16": "<u2", "UINT8": "u1", "BOOL": "?"}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _invalid(message: str, field: str = "", fix: str = "") -> RequestValidationError:
    return RequestValidationError(message, problems=[Problem(field, message)] if field else None, fix=fix)


def _validate(records: list[dict[str, Any]], many: TypeAdapter, prefix: str) -> list[dict[str, Any]]:
    if not records:
        raise _invalid("no rows in the request", fix="send at least one row")
    try:
        return [r.__dict__ for r in many.validate_python(records)]
    except ValidationError as exc:
        problems = [Problem(".".join(str(p) for p in (prefix, *e["loc"])), e["msg"]) for e in exc.errors()]
        raise RequestValidationError("the rows do not fit the API contract", problems=problems) from None


# --- Open Inference Protocol v2 -------------------------------------------------------------

def _decode_binary(header: dict[str, Any], blob: bytes) -> None:
    """Fill ``data`` of inputs sent with the binary tensor extension (Triton's ``binary_data_size``)."""
    offset = 0
    for tensor in header.get("inputs", []):
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        chunk = blob[offset: offset + size]
        offset += size
        dtype = tensor.get("datatype")
        if dtype == "BYTES":
            values, i = [], 0
            while i < len(chunk):
                (n,) = struct.unpack_from("<I", chunk, i)
                values.append(chunk[i + 4: i + 4 + n].decode())
                i += 4 + n
            tensor["data"] = values
        elif dtype in _NUMPY:  # one array, no Python value a number (the columnar path reads it as is)
            width = np.dtype(_NUMPY[dtype]).itemsize
            tensor["data"] = np.frombuffer(chunk[: len(chunk) - len(chunk) % width], dtype=_NUMPY[dtype])
        else:
            raise _invalid(f"binary data of type {dtype} is not supported", f"inputs.{tensor.get('name')}")


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, np.ndarray):
        return data.ravel().tolist()
    if isinstance(data, list) and data and isinstance(data[0], list):
        return [x for row in data for x in _flatten(row)]
    return list(data) if isinstance(data, list) else [data]


def _oip_records(body: dict[str, Any], spec: Spec) -> list[dict[str, Any]]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _invalid("'inputs' must be a non-empty list of tensors", "inputs")
    columns: dict[str, list[Any]] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) or "data" not in tensor:
            raise _invalid("each input needs a name (text), a shape, a datatype and data", f"inputs.{i}")
        values = _flatten(tensor["data"])
        if tensor.get("datatype") == "BYTES":
            values = [v.decode() if isinstance(v, bytes) else v for v in values]
        columns[tensor["name"]] = values
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise _invalid(f"input tensors have different lengths: {sorted(lengths)}", "inputs",
                       fix="send one value per row in every input")
    n = lengths.pop()
    return [{name: values[i] for name, values in columns.items()} for i in range(n)]


def _oip_columns(body: dict[str, Any], fields: dict[str, tuple[type, bool]]) -> RecordColumns | None:
    """A large request's tensors as columns, when every value is already what the record model
    would make of it; else None, and the records path applies the model's rules (and names any problem).

    ``fields`` maps each record field to (its Python type, whether it is required). Numbers must
    be numbers (a binary tensor of a numeric type, or JSON ints and floats; no NaN, which the
    records path would keep as NaN and the log as such), text text and booleans booleans,
    None only where a field is optional; datetimes take the records path. Unknown tensors
    are ignored, as the record model ignores unknown fields.
    """
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return None
    columns: dict[str, Any] = {}
    lengths = set()
    for tensor in inputs:
        if not isinstance(tensor, dict) or "data" not in tensor or not isinstance(tensor.get("name"), str):
            return None
        name, data = tensor["name"], tensor["data"]
        lengths.add(len(data) if isinstance(data, list | np.ndarray) else -1)
        if name not in fields:
            continue
        kind, required = fields[name]
        if isinstance(data, np.ndarray):  # a binary tensor
            if kind is bool and data.dtype == np.bool_:
                columns[name] = data
            elif kind is float and data.dtype.kind in "iuf" and not np.isnan(data).any():
                columns[name] = data.astype(np.float64, copy=False)
            else:
                return None
            continue
        if not isinstance(data, list) or (data and isinstance(data[0], list)):
            return None
        allowed = {float, int} if kind is float else {kind}
        seen = set(map(type, data))
        if not required:
            seen.discard(type(None))
        if not seen <= allowed:
            return None
        # numbers as the record model gives them: floats (an int above 2**53 is rounded, as there)
        columns[name] = [None if v is None else float(v) for v in data] if int in seen else data
    if len(lengths) != 1 or any(required and name not in columns for name, (_, required) in fields.items()):
        return None
    n = lengths.pop()
    return RecordColumns(columns, n) if n >= COLUMNS_FROM else None


def _record_fields(record_model: type) -> dict[str, tuple[type, bool]]:
    """The record model's fields whose values the columnar path can check: (type, required)."""
    out = {}
    for name, info in record_model.model_fields.items():
        kinds = [k for k in getattr(info.annotation, "__args__", (info.annotation,)) if k is not type(None)]
        if len(kinds) == 1 and kinds[0] in (float, str, bool):
            out[name] = (kinds[0], info.is_required())
        else:
            out[name] = (object, info.is_required())  # e.g. a datetime: never matched, so the records path
    return out


def add_compat_routes(app: FastAPI, state: Any, record_model: type) -> Callable[..., bytes]:
    """Add the OIP v2 and MLflow routes; returns the OIP infer handler (body bytes -> answer bytes)
    for the server's hot route."""
    spec: Spec = state.spec
    many = TypeAdapter(list[record_model])
    fields = _record_fields(record_model)
    name = spec.name

    def _model(model_name: str) -> None:
        if model_name != name:
            raise NotFound(f"model {model_name!r} is not served here", fix=f"this server serves {name!r}")

    def _metadata() -> dict[str, Any]:
        predictor = state.predictor
        inputs = [{"name": n, "datatype": _OIP_TYPES[f.type], "shape": [-1]} for n, f in spec.features.items()]
        outputs = [{"name": "probability", "datatype": "FP64", "shape": [-1]},
                   {"name": "prediction", "datatype": "BYTES" if spec.task == "binary" else "FP64", "shape": [-1]},
                   {"name": "decision", "datatype": "BYTES" if spec.task == "binary" else "FP64", "shape": [-1]}]
        return {"name": name, "versions": [str(predictor.version)] if predictor else [], "platform": "tidal_lightgbm",
                "inputs": inputs, "outputs": outputs}

    @app.get("/v2", tags=["oip"])
    async def oip_server() -> Response:
        return _json({"name": "tidal", "version": tidal.__version__, "extensions": ["binary_tensor_data"]})

    @app.get("/v2/health/live", tags=["oip"])
    async def oip_live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready", tags=["oip"])
    async def oip_ready() -> Response:
        ready = state.predictor is not None
        return _json({"ready": ready}, 200 if ready else 503)

    @app.get("/v2/models/{model_name}", tags=["oip"])
    @app.get("/v2/models/{model_name}/versions/{model_version}", tags=["oip"])
    async def oip_metadata(model_name: str, model_version: str | None = None) -> Response:
        _model(model_name)
        return _json(_metadata())

    @app.get("/v2/models/{model_name}/ready", tags=["oip"])
    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", tags=["oip"])
    async def oip_model_ready(model_name: str, model_version: str | None = None) -> Response:
        _model(model_name)
        ready = state.predictor is not None
        return _json({"name": name, "ready": ready}, 200 if ready else 503)

    def infer_bytes(raw: bytes, header_len: str | None, model_version: str | None = None, after: Any = None) -> bytes:
        """The answer to an OIP v2 infer request's body (``header_len``: its Inference-Header-Content-Length)."""
        try:
            head = raw[: int(header_len)] if header_len else raw
            body = orjson.loads(head)
        except (ValueError, orjson.JSONDecodeError):
            raise _invalid("the body is not a valid inference request (JSON)", fix="see the Open Inference Protocol v2") from None
        if not isinstance(body, dict):
            raise _invalid("the inference request must be a JSON object")
        if header_len:
            _decode_binary(body, raw[int(header_len):])
        if state.predictor is None:
            raise NotReady("no model is in production yet")
        if model_version is not None and model_version != str(state.predictor.version):
            raise NotFound(f"version {model_version} of {name!r} is not in service",
                           fix=f"use version {state.predictor.version} or omit the version")
        records = _oip_columns(body, fields)
        if records is None:
            records = _validate(_oip_records(body, spec), many, "inputs")
        version, out = state.score(records, after=after)
        wanted = [o.get("name") for o in body.get("outputs") or []] or ["probability", "prediction", "decision"]
        columns = {"probability": ("FP64", [o["probability"] for o in out]),
                   "prediction": ("BYTES" if spec.task == "binary" else "FP64", [o["prediction"] for o in out]),
                   "decision": ("BYTES" if spec.task == "binary" else "FP64", [o["decision"] for o in out]),
                   "prediction_id": ("BYTES", [o["prediction_id"] for o in out])}
        unknown = [w for w in wanted if w not in columns]
        if unknown:
            raise _invalid(f"unknown output(s) {unknown}", "outputs", fix=f"choose from {sorted(columns)}")
        result = {"model_name": name, "model_version": str(version), "outputs": [
            {"name": w, "datatype": columns[w][0], "shape": [len(out)], "data": columns[w][1]} for w in wanted]}
        if "id" in body:
            result["id"] = body["id"]
        return orjson.dumps(result)

    @app.post("/v2/models/{model_name}/infer", tags=["oip"])
    @app.post("/v2/models/{model_name}/versions/{model_version}/infer", tags=["oip"])
    async def oip_infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
        # POST /v2/models/<this model>/infer is answered by infer_bytes on the hot route (see app.py)
        _model(model_name)
        payload = infer_bytes(await request.body(), request.headers.get("inference-header-content-length"),
                              model_version)
        return Response(payload, media_type="application/json")

    # --- MLflow scoring protocol --------------------------------------------------------------
    @app.post("/invocations", tags=["mlflow"])
    async def invocations(request: Request) -> Response:
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
        raw = await request.body()
        if content_type == "text/csv":
            import io

            import polars as pl

            frame = pl.read_csv(io.BytesIO(raw), infer_schema_length=1000)
            records = frame.to_dicts()
        else:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise _invalid("the body is not valid JSON") from None
            records = _mlflow_records(body, spec)
        records = _validate(records, many, "rows")
        _, out = state.score(records)
        return _json({"predictions": out})

    return infer_bytes


def _mlflow_records(body: Any, spec: Spec) -> list[dict[str, Any]]:
    """MLflow 2's four JSON formats: dataframe_split, dataframe_records, instances, inputs."""
    if not isinstance(body, dict):
        raise _invalid("expected a JSON object with one of dataframe_split, dataframe_records, instances, inputs")
    keys = [k for k in ("dataframe_split", "dataframe_records", "instances", "inputs") if k in body]
    if len(keys) != 1:
        raise _invalid("send exactly one of dataframe_split, dataframe_records, instances or inputs",
                       fix='e.g. {"dataframe_records": [{"col": 1}]}')
    key, payload = keys[0], body[keys[0]]
    if key == "dataframe_split":
        if not isinstance(payload, dict) or "columns" not in payload or "data" not in payload:
            raise _invalid("dataframe_split needs 'columns' and 'data'", "dataframe_split")
        return [dict(zip(payload["columns"], row)) for row in payload["data"]]
    if key == "dataframe_records":
        if not isinstance(payload, list):
            raise _invalid("dataframe_records must be a list of records", "dataframe_records")
        return payload
    if isinstance(payload, dict):  # columnar: {"col": [values]}
        lengths = {len(v) if isinstance(v, list) else 1 for v in payload.values()}
        if len(lengths) != 1:
            raise _invalid("columns have different lengths", key)
        n = lengths.pop()
        return [{c: (v[i] if isinstance(v, list) else v) for c, v in payload.items()} for i in range(n)]
    if isinstance(payload, list) and payload and isinstance(payload[0], list):  # rows in feature order
        names = list(spec.features)
        return [dict(zip(names, row)) for row in payload]
    if isinstance(payload, list):
        return payload
    raise _invalid(f"{key} must be a list or a mapping of columns", key)
