"""The hot path's shortcuts give what the general path gives: msgspec against pydantic, LightGBM's
single-row API against ``Booster.predict``, tuple log rows against dict rows, batched ids against uuid4."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import lightgbm as lgb
import msgspec
import numpy as np
import pyarrow as pa
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError, create_model

from tests.conftest import CHURN_SPEC
from tidal.infra.lake import Lake
from tidal.serving.app import LABEL_SCHEMA, prediction_ids
from tidal.serving.logbuffer import LogBuffer
from tidal.serving.predictor import _SingleRows
from tidal.serving.schema import record_decoder, record_model
from tidal.spec import parse_spec

SPEC = parse_spec(CHURN_SPEC)
GOOD = {"gender": "Male", "SeniorCitizen": True, "Partner": "No", "tenure": 3, "InternetService": "DSL",
        "Contract": "One year", "PaymentMethod": "Mailed check", "MonthlyCharges": 20.5, "TotalCharges": None,
        "customerID": "c-1", "unknown": 1}


def test_prediction_ids_have_uuid4_hex_format_and_are_distinct():
    ids = prediction_ids(1000)
    assert len(set(ids)) == 1000
    for text in ids[:50] + prediction_ids(1):
        u = uuid.UUID(hex=text)
        assert u.hex == text and u.version == 4 and u.variant == uuid.RFC_4122


def _both(model, body: bytes):
    """(the fast decoder's records, the pydantic model's) for ``body``."""
    many = body.lstrip()[:1] == b"["
    slow = TypeAdapter(list[model] if many else model).validate_json(body)
    return record_decoder(model)(body), [r.__dict__ for r in (slow if many else [slow])]


def test_record_decoder_gives_what_the_pydantic_model_gives():
    model = record_model(SPEC)
    for body in (msgspec.json.encode([GOOD, dict(GOOD, tenure=1.5, TotalCharges=10, SeniorCitizen=False)]),
                 msgspec.json.encode({k: v for k, v in GOOD.items() if k != "TotalCharges"})):
        fast, slow = _both(model, body)
        assert fast == slow
        assert [list(r) for r in fast] == [list(r) for r in slow]  # same keys, same order
        assert all(type(a[k]) is type(b[k]) for a, b in zip(fast, slow) for k in a)


def test_record_decoder_parses_datetimes_as_pydantic_does():
    model = create_model("R", __base__=BaseModel, t=(datetime, ...), u=(datetime | None, None), x=(float, ...))
    for t in ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05.1234567+02:00", "2024-01-02 03:04:05", "2024-01-02"):
        fast, slow = _both(model, msgspec.json.encode({"t": t, "u": t, "x": 1}))
        assert fast == slow and repr(fast) == repr(slow)
    assert record_decoder(model)(b'{"t": "not a time", "x": 1}') is None  # the model names the problem


@pytest.mark.parametrize("change", [{"tenure": "3"}, {"SeniorCitizen": 1}, {"tenure": None}, {"gender": 1}])
def test_record_decoder_leaves_to_pydantic_what_it_cannot_decode_exactly(change):
    assert record_decoder(record_model(SPEC))(msgspec.json.encode(dict(GOOD, **change))) is None


def test_record_decoder_leaves_missing_fields_empty_arrays_and_bad_json_to_pydantic():
    decode = record_decoder(record_model(SPEC))
    body = {k: v for k, v in GOOD.items() if k != "tenure"}
    assert decode(msgspec.json.encode(body)) is None
    assert decode(b"[]") is None and decode(b"") is None and decode(b"{") is None
    with pytest.raises(ValidationError):
        TypeAdapter(record_model(SPEC)).validate_python(body)


@pytest.mark.parametrize("objective", ["binary", "regression"])
def test_single_row_predictions_equal_booster_predict(objective):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 6))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) + rng.normal(size=len(X)) > 0.5).astype(float)
    booster = lgb.train({"objective": objective, "num_leaves": 15, "verbose": -1}, lgb.Dataset(X, y), 30)
    booster = lgb.Booster(model_str=booster.model_to_string())
    rows = _SingleRows(booster)
    Q = rng.normal(size=(50, 6))
    Q[rng.random(Q.shape) < 0.2] = np.nan
    assert rows.fits(Q)
    assert np.array_equal(rows.predict(Q), booster.predict(Q, num_threads=1))
    assert not rows.fits(Q[:, :5])


def test_log_buffer_tuple_and_dict_rows_give_the_table_from_pylist_gives(tmp_path):
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    dicts = [{"_id": "a", "_label": "1", "_ts": now}, {"_id": "b", "_ts": now, "extra": 1}]
    buf = LogBuffer(lake=Lake(tmp_path), table="labels", schema=LABEL_SCHEMA, capacity=10)
    buf.append(("a", "1", now))
    buf.append(dicts[1])
    assert buf.arrow(list(buf._rows)).equals(pa.Table.from_pylist(dicts, schema=LABEL_SCHEMA))
    assert buf.flush() == 2
    buf.append(("c", "0", now))
    assert buf.flush() == 1  # the second commit goes through the table kept open
    table = Lake(tmp_path).read("labels")
    assert sorted(table.column("_id").to_pylist()) == ["a", "b", "c"] and Lake(tmp_path).version("labels") == 1
