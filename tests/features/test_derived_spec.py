"""The spec's derived section: every problem reported at once, each at its field path with a fix."""

from __future__ import annotations

import pytest

from tests.conftest import CHURN_SPEC
from tidal.errors import SpecError
from tidal.spec import parse_spec, spec_json_schema


def _problems(derived=None, **extra) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(dict(CHURN_SPEC, derived=derived or {}, **extra))
    return {p.location: f"{p.message} | {p.fix}" for p in info.value.problems}


def test_a_valid_section_parses_with_defaults():
    spec = parse_spec(dict(CHURN_SPEC, plugins=["my_pkg.features"], derived={
        "te": {"kind": "target_encoding", "column": "PaymentMethod"},
        "b": {"kind": "bucketize", "column": "tenure", "bounds": [12, 24]}}))
    assert spec.derived["te"].folds == 5 and spec.derived["te"].smoothing == 20
    assert spec.derived["b"].bounds == [12.0, 24.0]
    assert "te" not in spec.model_features  # derived features are not model inputs a request carries
    schema = spec_json_schema()
    assert "derived" in schema["properties"] and "plugins" in schema["properties"]


def test_inputs_must_be_declared_features_of_the_right_type():
    problems = _problems({
        "l": {"kind": "log", "column": "gender"},
        "r": {"kind": "ratio", "numerator": "tenure", "denominator": "nope"},
        "t": {"kind": "target_encoding", "column": "tenure"},
        "p": {"kind": "python", "function": "f", "inputs": ["tenure", "l"]}})
    assert "categorical feature; log takes numeric" in problems["derived.l.column"]
    assert "tenure, MonthlyCharges, TotalCharges" in problems["derived.l.column"]
    assert "'nope' is not a declared feature" in problems["derived.r.denominator"]
    assert "target_encoding takes categorical" in problems["derived.t.column"]
    assert "cannot take other derived features" in problems["derived.p.inputs.1"]
    assert len(problems) == 4  # all at once


@pytest.mark.parametrize("name, what", [("tenure", "a declared feature"), ("Churn", "the target"),
                                        ("customerID", "the entity key")])
def test_names_must_not_clash(name, what):
    problems = _problems({name: {"kind": "log", "column": "tenure"}})
    assert problems[f"derived.{name}"].startswith(f"'{name}' is already {what}")


@pytest.mark.parametrize("definition, location, message", [
    ({"kind": "bucketize", "column": "tenure", "bounds": [5, 5]}, "derived.x", "strictly increasing"),
    ({"kind": "bucketize", "column": "tenure", "bounds": []}, "derived.x.bounds", "at least 1"),
    ({"kind": "clip", "column": "tenure"}, "derived.x", "clip needs min, max or both"),
    ({"kind": "clip", "column": "tenure", "min": 3, "max": 1}, "derived.x", "greater than max"),
    ({"kind": "target_encoding", "column": "Contract", "folds": 1}, "derived.x.folds", "greater than or equal to 2"),
    ({"kind": "log", "column": "tenure", "base": 10}, "derived.x.base", "Extra inputs"),
    ({"kind": "sqrt", "column": "tenure"}, "derived.x", "kind must be one of: log, clip"),
    ({"column": "tenure"}, "derived.x", "kind must be one of"),
])
def test_definitions_are_checked_at_their_field(definition, location, message):
    problems = _problems({"x": definition})
    assert message in problems[location]


def test_plugins_are_module_paths():
    assert "plugins.0" in _problems(plugins=["not a module"])
