"""validate_batch: every row gets its reasons; a batch missing a required column is rejected whole."""

from __future__ import annotations

import math

import polars as pl
import pytest

from tests.conftest import CHURN_SPEC
from tidal.data.validate import REASONS, spec_columns, validate_batch
from tidal.errors import DataValidationError
from tidal.spec import parse_spec


def _sample(telco_df: pl.DataFrame, n: int = 20) -> pl.DataFrame:
    return telco_df.head(n)


def _set(df: pl.DataFrame, row: int, column: str, value) -> pl.DataFrame:
    """A copy of ``df`` with one cell replaced (the column keeps its dtype when it can)."""
    values = df[column].to_list()
    values[row] = value
    return df.with_columns(pl.Series(column, values, dtype=df.schema[column]))


def _reasons(result, row: int) -> list[str]:
    hit = result.quarantined.filter(pl.col("_row") == row)
    assert hit.height == 1, f"row {row} is not quarantined: {result.quarantined}"
    return hit[REASONS][0].to_list()


def test_clean_telco_sample_is_fully_accepted_and_typed(telco_df, churn_spec):
    result = validate_batch(telco_df, churn_spec)
    assert result.accepted.height == telco_df.height == 7043
    assert result.quarantined.height == 0
    assert result.reason_counts == {}
    schema = result.accepted.schema
    assert schema["tenure"] == pl.Float64
    assert schema["MonthlyCharges"] == pl.Float64
    assert schema["TotalCharges"] == pl.Float64
    assert schema["SeniorCitizen"] == pl.Boolean
    assert schema["gender"] == pl.String
    # the row index lets accepted rows be traced back to the batch
    assert result.accepted["_row"].to_list() == list(range(7043))
    first = result.accepted.row(0, named=True)
    assert first["customerID"] == "7590-VHVEG"
    assert first["tenure"] == 1.0 and first["MonthlyCharges"] == 29.85
    assert first["SeniorCitizen"] is False


def test_text_in_numeric_column_is_quarantined_naming_column_and_value(telco_df, churn_spec):
    df = _set(_sample(telco_df), 3, "tenure", "abc")
    result = validate_batch(df, churn_spec)
    assert result.quarantined["_row"].to_list() == [3]
    reasons = _reasons(result, 3)
    assert len(reasons) == 1
    assert reasons[0].startswith("tenure:")
    assert "abc" in reasons[0] and "numeric" in reasons[0]
    # the quarantined row keeps its raw text
    assert result.quarantined["tenure"].to_list() == ["abc"]
    assert result.accepted.height == df.height - 1
    assert 3 not in result.accepted["_row"].to_list()
    assert result.reason_counts == {"tenure": 1}


def test_invalid_boolean_is_quarantined(telco_df, churn_spec):
    df = _set(_sample(telco_df), 2, "SeniorCitizen", "maybe")
    df = _set(df, 4, "SeniorCitizen", "Yes")  # a recognised spelling of true
    result = validate_batch(df, churn_spec)
    assert result.quarantined["_row"].to_list() == [2]
    assert any(r.startswith("SeniorCitizen:") and "maybe" in r for r in _reasons(result, 2))
    row4 = result.accepted.filter(pl.col("_row") == 4)
    assert row4["SeniorCitizen"].to_list() == [True]


@pytest.mark.parametrize("value, word", [("-1", "below min"), ("101", "above max")])
def test_out_of_range_numeric_is_quarantined(telco_df, churn_spec, value, word):
    df = _set(_sample(telco_df), 5, "tenure", value)
    result = validate_batch(df, churn_spec)
    assert result.quarantined["_row"].to_list() == [5]
    (reason,) = _reasons(result, 5)
    assert reason.startswith("tenure:") and word in reason
    assert value.lstrip("-") in reason


def test_boundary_values_are_accepted(telco_df, churn_spec):
    df = _set(_sample(telco_df), 0, "tenure", "0")
    df = _set(df, 1, "tenure", "100")
    result = validate_batch(df, churn_spec)
    assert result.quarantined.height == 0
    assert result.accepted["tenure"].to_list()[:2] == [0.0, 100.0]


def test_category_not_allowed_is_quarantined(telco_df, churn_spec):
    df = _set(_sample(telco_df), 7, "Contract", "Weekly")
    result = validate_batch(df, churn_spec)
    assert result.quarantined["_row"].to_list() == [7]
    (reason,) = _reasons(result, 7)
    assert reason.startswith("Contract:") and "Weekly" in reason and "not an allowed value" in reason
    assert result.reason_counts == {"Contract": 1}


def test_category_without_allowed_list_accepts_new_values(telco_df, churn_spec):
    df = _set(_sample(telco_df), 7, "PaymentMethod", "Crypto")
    result = validate_batch(df, churn_spec)
    assert result.quarantined.height == 0
    assert "Crypto" in result.accepted["PaymentMethod"].to_list()


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_null_in_non_nullable_column_is_quarantined(telco_df, churn_spec, blank):
    df = _set(_sample(telco_df), 9, "MonthlyCharges", blank)
    result = validate_batch(df, churn_spec)
    assert result.quarantined["_row"].to_list() == [9]
    assert _reasons(result, 9) == ["MonthlyCharges: missing value (not nullable)"]


def test_missing_target_value_and_key_are_quarantined(telco_df, churn_spec):
    df = _set(_sample(telco_df), 1, "Churn", None)
    df = _set(df, 2, "customerID", " ")
    result = validate_batch(df, churn_spec)
    assert result.quarantined["_row"].to_list() == [1, 2]
    assert any(r.startswith("Churn:") for r in _reasons(result, 1))
    assert any(r.startswith("customerID:") for r in _reasons(result, 2))


def test_several_problems_in_one_row_are_all_reported(telco_df, churn_spec):
    df = _set(_sample(telco_df), 0, "tenure", "abc")
    df = _set(df, 0, "gender", "Other")
    df = _set(df, 0, "MonthlyCharges", None)
    result = validate_batch(df, churn_spec)
    reasons = _reasons(result, 0)
    assert {r.split(":")[0] for r in reasons} == {"tenure", "gender", "MonthlyCharges"}
    assert result.reason_counts == {"tenure": 1, "gender": 1, "MonthlyCharges": 1}


def test_blank_total_charges_is_null_and_accepted_when_nullable(telco_df, churn_spec):
    blanks = telco_df.with_row_index("i").filter(pl.col("TotalCharges") == " ")["i"].to_list()
    assert len(blanks) == 11  # the real data has eleven " " cells (new customers)
    result = validate_batch(telco_df, churn_spec)
    assert result.quarantined.height == 0
    typed = result.accepted.filter(pl.col("_row").is_in(blanks))
    assert typed.height == 11
    assert typed["TotalCharges"].null_count() == 11
    assert result.accepted["TotalCharges"].null_count() == 11


def test_blank_total_charges_is_quarantined_when_not_nullable(telco_df):
    data = {**CHURN_SPEC, "features": {**CHURN_SPEC["features"],
                                       "TotalCharges": {"type": "numeric", "min": 0, "nullable": False}}}
    spec = parse_spec(data)
    result = validate_batch(telco_df, spec)
    assert result.quarantined.height == 11
    assert result.reason_counts == {"TotalCharges": 11}
    assert set(result.quarantined["TotalCharges"].to_list()) == {" "}


@pytest.mark.parametrize("column", ["tenure", "Churn", "customerID"])
def test_missing_required_column_rejects_batch(telco_df, churn_spec, column):
    with pytest.raises(DataValidationError) as err:
        validate_batch(telco_df.drop(column), churn_spec)
    assert [p.location for p in err.value.problems] == [column]
    assert column in str(err.value)
    assert "missing" in str(err.value)


def test_every_missing_required_column_reported_at_once(telco_df, churn_spec):
    with pytest.raises(DataValidationError) as err:
        validate_batch(telco_df.drop("tenure", "MonthlyCharges", "Churn"), churn_spec)
    assert {p.location for p in err.value.problems} == {"tenure", "MonthlyCharges", "Churn"}
    assert "3 required column(s)" in err.value.message


def test_missing_nullable_column_is_filled_with_nulls(telco_df, churn_spec):
    result = validate_batch(_sample(telco_df).drop("TotalCharges", "Partner"), churn_spec)
    assert result.quarantined.height == 0
    assert result.accepted.height == 20
    assert result.accepted["TotalCharges"].null_count() == 20
    assert result.accepted["Partner"].null_count() == 20
    assert result.accepted.schema["TotalCharges"] == pl.Float64


def test_extra_columns_are_dropped_and_reported(telco_df, churn_spec):
    df = _sample(telco_df).with_columns(pl.lit("x").alias("notes"))
    result = validate_batch(df, churn_spec)
    wanted = set(spec_columns(churn_spec))
    expected_dropped = [c for c in df.columns if c not in wanted]
    assert "notes" in result.dropped_columns and "Dependents" in result.dropped_columns
    assert result.dropped_columns == expected_dropped
    assert set(result.accepted.columns) == wanted | {"_row"}
    assert set(result.quarantined.columns) == wanted | {"_row", REASONS}


def _typed_parquet_frame(telco_df: pl.DataFrame, tmp_path) -> pl.DataFrame:
    typed = telco_df.with_columns(
        pl.col("tenure").cast(pl.Int64),
        pl.col("SeniorCitizen").cast(pl.Int64),
        pl.col("MonthlyCharges").cast(pl.Float64),
        pl.col("TotalCharges").str.strip_chars().replace("", None).cast(pl.Float64),
    )
    path = tmp_path / "telco.parquet"
    typed.write_parquet(path)
    return pl.read_parquet(path)


def test_parquet_with_numeric_types_matches_csv(telco_df, churn_spec, tmp_path):
    frame = _typed_parquet_frame(telco_df, tmp_path)
    assert frame.schema["tenure"] == pl.Int64 and frame.schema["TotalCharges"] == pl.Float64
    from_parquet = validate_batch(frame, churn_spec)
    from_csv = validate_batch(telco_df, churn_spec)
    assert from_parquet.quarantined.height == 0
    assert from_parquet.accepted.schema == from_csv.accepted.schema
    assert from_parquet.accepted.equals(from_csv.accepted)


def test_parquet_typed_out_of_range_is_quarantined_with_raw_text(telco_df, churn_spec, tmp_path):
    frame = _typed_parquet_frame(telco_df.head(30), tmp_path)
    frame = _set(frame, 4, "tenure", -3)
    frame = _set(frame, 6, "SeniorCitizen", 2)  # not a boolean
    result = validate_batch(frame, churn_spec)
    assert result.quarantined["_row"].to_list() == [4, 6]
    assert _reasons(result, 4) == ["tenure: -3.0 is below min 0.0"]
    assert any(r.startswith("SeniorCitizen:") for r in _reasons(result, 6))
    # quarantined rows are kept as text, whatever the input types
    assert result.quarantined.schema["tenure"] == pl.String
    assert result.quarantined["tenure"].to_list()[0] == "-3"


def test_parquet_boolean_and_integral_float_categories(telco_df, churn_spec, tmp_path):
    frame = _typed_parquet_frame(telco_df.head(10), tmp_path).with_columns(
        (pl.col("SeniorCitizen") == 1).alias("SeniorCitizen"))
    assert frame.schema["SeniorCitizen"] == pl.Boolean
    data = {**CHURN_SPEC, "features": {**CHURN_SPEC["features"], "Partner": {"type": "categorical"}}}
    frame = frame.with_columns(pl.Series("Partner", [1.0, 2.5] + [3.0] * 8))
    result = validate_batch(frame, parse_spec(data))
    assert result.quarantined.height == 0
    assert result.accepted["SeniorCitizen"].to_list() == frame["SeniorCitizen"].to_list()
    # integral floats become category text without ".0"
    assert result.accepted["Partner"].to_list()[:3] == ["1", "2.5", "3"]


@pytest.mark.parametrize("source", ["parquet-nan", "csv-text-nan"])
def test_nan_in_non_nullable_numeric_is_quarantined(telco_df, churn_spec, tmp_path, source):
    """NaN is a missing number: MonthlyCharges is not nullable, so a NaN must not be accepted."""
    if source == "parquet-nan":
        frame = _set(_typed_parquet_frame(telco_df.head(10), tmp_path), 3, "MonthlyCharges", math.nan)
    else:
        frame = _set(_sample(telco_df, 10), 3, "MonthlyCharges", "NaN")
    result = validate_batch(frame, churn_spec)
    assert result.quarantined["_row"].to_list() == [3]
    assert all(r.startswith("MonthlyCharges:") for r in _reasons(result, 3))
    assert not any(math.isnan(v) for v in result.accepted["MonthlyCharges"].to_list())
