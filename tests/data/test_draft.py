"""draft_spec: a reviewable spec inferred from a data file, with identifiers and leaks excluded."""

from __future__ import annotations

import polars as pl
import pytest
import yaml

from tidal.data.draft import draft_spec, draft_yaml
from tidal.data.validate import validate_batch
from tidal.errors import DataValidationError
from tidal.spec import parse_spec


@pytest.fixture(scope="module")
def telco_draft():
    from tests.conftest import TELCO

    return draft_spec(TELCO, "Churn")


def test_binary_task_with_rarer_class_positive(telco_draft):
    spec, notes = telco_draft
    assert spec["task"] == "binary"
    assert spec["target"] == "Churn"
    assert spec["positive_class"] == "Yes"  # 1869 Yes against 5174 No
    assert set(spec["costs"]) == {"true_positive", "false_positive", "true_negative", "false_negative"}
    assert any("positive class 'Yes'" in n for n in notes)
    assert spec["name"] == "telco_customer_churn"


def test_identifier_excluded_and_used_as_entity_key(telco_draft):
    spec, notes = telco_draft
    assert spec["exclude"] == ["customerID"]
    assert spec["entity_key"] == "customerID"
    assert "customerID" not in spec["features"]
    assert any(n.startswith("customerID: excluded") and "identifier" in n for n in notes)


def test_inferred_types(telco_draft):
    spec, _ = telco_draft
    f = spec["features"]
    assert "Churn" not in f
    assert len(f) == 19  # 21 columns minus target and identifier
    assert f["TotalCharges"]["type"] == "numeric"
    assert f["TotalCharges"]["nullable"] is True  # eleven blank cells
    assert f["TotalCharges"]["min"] == 0.0
    assert f["tenure"] == {"type": "numeric", "nullable": False, "min": 0.0, "description": "observed 0.0 to 72.0"}
    assert f["MonthlyCharges"]["nullable"] is False
    assert f["SeniorCitizen"]["type"] == "boolean"
    assert f["SeniorCitizen"]["nullable"] is False
    assert f["Contract"]["type"] == "categorical"
    assert f["Contract"]["allowed"] == ["Month-to-month", "One year", "Two year"]
    assert f["gender"]["allowed"] == ["Female", "Male"]
    assert f["PaymentMethod"]["allowed"] == sorted(f["PaymentMethod"]["allowed"])
    assert len(f["PaymentMethod"]["allowed"]) == 4


def test_draft_is_a_valid_spec_that_accepts_its_own_data(telco_draft, telco_df):
    spec_map, notes = telco_draft
    spec = parse_spec(spec_map)
    assert spec.entity_key == "customerID"
    assert spec.features["TotalCharges"].nullable
    result = validate_batch(telco_df, spec)
    assert result.quarantined.height == 0
    assert result.accepted.height == 7043
    # the YAML the CLI writes parses back to the same spec, with the notes as comments
    text = draft_yaml(spec_map, notes)
    assert text.startswith("#")
    assert all(f"# - {n}" in text for n in notes)
    assert parse_spec(yaml.safe_load(text)) == spec


def test_leak_column_is_excluded(telco_df, tmp_path):
    df = telco_df.head(2000).with_columns(
        (pl.col("Churn") == "Yes").cast(pl.Int64).cast(pl.String).alias("churned_flag"))
    path = tmp_path / "leaky.csv"
    df.write_csv(path)
    spec, notes = draft_spec(path, "Churn")
    assert "churned_flag" in spec["exclude"]
    assert "churned_flag" not in spec["features"]
    assert any(n.startswith("churned_flag: excluded") and "leak" in n for n in notes)
    # honest features survive the leak check
    assert {"tenure", "MonthlyCharges", "Contract"} <= set(spec["features"])
    parse_spec(spec)


def test_unknown_target_lists_the_columns(telco_csv):
    with pytest.raises(DataValidationError) as err:
        draft_spec(telco_csv, "churn")  # wrong case
    message = str(err.value)
    assert "'churn'" in message
    assert "telco_customer_churn.csv" in message
    for column in ("customerID", "Churn", "TotalCharges"):
        assert column in err.value.fix


def test_regression_target_and_datetime_event_time(tmp_path):
    n = 60
    df = pl.DataFrame({
        "when": [f"2024-01-{1 + i % 28:02d}T10:00:00" for i in range(n)],
        "store": [["north", "south", "east"][i % 3] for i in range(n)],
        "price": [str(10 + (i * 7) % 13) for i in range(n)],
        "sales": [str(100 + (i * 37) % 91) for i in range(n)],
    })
    path = tmp_path / "sales.csv"
    df.write_csv(path)
    spec, _ = draft_spec(path, "sales")
    assert spec["task"] == "regression"
    assert "positive_class" not in spec
    assert spec["event_time"] == "when"
    assert "when" not in spec["features"]
    assert spec["features"]["store"]["allowed"] == ["east", "north", "south"]
    assert spec["features"]["price"]["type"] == "numeric"
    parse_spec(spec)
