from pathlib import Path

import pytest
import yaml

from tidal.errors import SpecError
from tidal.spec import dump_spec, load_spec, parse_spec, spec_json_schema
from tests.conftest import CHURN_SPEC


def test_valid_spec_fills_defaults():
    spec = parse_spec(CHURN_SPEC)
    assert spec.task == "binary"
    assert spec.features["tenure"].min == 0
    assert spec.guardrails.p99_latency_ms == 50.0
    assert spec.binary_costs.false_negative == 60
    assert spec.positive_label == "Yes"


def test_every_problem_reported_at_once_with_paths_and_fixes():
    bad = dict(CHURN_SPEC, task="classify", colour="blue",
               features={"tenure": {"type": "numeric", "min": 5, "max": 1}, "x": {"type": "text"}})
    bad.pop("target")
    with pytest.raises(SpecError) as err:
        parse_spec(bad)
    locs = {p.location for p in err.value.problems}
    assert {"task", "colour", "target", "features.x.type", "features.tenure"} <= locs
    colour = next(p for p in err.value.problems if p.location == "colour")
    assert "remove this key" in colour.fix
    assert "5 problem(s)" in str(err.value) or len(err.value.problems) >= 5


def test_semantic_checks():
    bad = dict(CHURN_SPEC, exclude=["tenure"],
               costs={"under_per_unit": 1.0, "over_per_unit": 2.0})
    bad["features"] = dict(CHURN_SPEC["features"], Churn={"type": "categorical"})
    with pytest.raises(SpecError) as err:
        parse_spec(bad)
    messages = " | ".join(str(p) for p in err.value.problems)
    assert "target is listed as a feature" in messages
    assert "both excluded and a feature" in messages
    assert "costs do not fit a binary task" in messages


def test_constraints_must_fit_type():
    bad = dict(CHURN_SPEC)
    bad["features"] = {"g": {"type": "categorical", "min": 1}}
    with pytest.raises(SpecError) as err:
        parse_spec(bad)
    assert err.value.problems[0].location == "features.g"


def test_load_spec_yaml_errors(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="not found"):
        load_spec(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntask: [binary\n")
    with pytest.raises(SpecError, match="line"):
        load_spec(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(scalar)


def test_dump_round_trips_and_schema_has_descriptions(tmp_path: Path):
    spec = parse_spec(CHURN_SPEC)
    text = dump_spec(spec)
    again = parse_spec(yaml.safe_load(text))
    assert again == spec
    assert again.digest() == spec.digest()
    schema = spec_json_schema()
    assert schema["additionalProperties"] is False
    defs = schema["$defs"]

    def described(prop):  # pydantic moves a description equal to the model's docstring into $defs
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        return prop.get("description") or defs.get(ref, {}).get("description")

    for name, prop in schema["properties"].items():
        assert described(prop), f"field {name} has no description"
    for model, sub in defs.items():
        for name, prop in sub.get("properties", {}).items():
            assert described(prop), f"{model}.{name} has no description"
