"""Registered Python transforms: plugins imported where the pipeline is built or loaded, and a
bundle refused when its function is missing or its source has changed since training."""

from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import CHURN_SPEC
from tidal.errors import SpecError, StateError
from tidal.features import derived as D
from tidal.features import register_transform
from tidal.features.pipeline import FeaturePipeline
from tidal.spec import parse_spec

PLUGIN = '''
import numpy as np
from tidal.features import register_transform


@register_transform("charge_per_month")
def charge_per_month(total, tenure, *, floor):
    return total / np.maximum(tenure, floor)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plugin module on sys.path, a fresh registry, and a function to rewrite the module."""
    monkeypatch.setattr(D, "_REGISTRY", {})
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"tidal_test_plugin_{tmp_path.name.replace('-', '_')}"
    path = tmp_path / f"{name}.py"
    path.write_text(PLUGIN)
    yield name, path
    sys.modules.pop(name, None)


def _spec(module: str):
    return parse_spec(dict(CHURN_SPEC, plugins=[module], derived={
        "per_month": {"kind": "python", "function": "charge_per_month", "inputs": ["TotalCharges", "tenure"],
                      "params": {"floor": 1}}}))


def test_register_returns_the_function_and_refuses_a_taken_name(monkeypatch):
    monkeypatch.setattr(D, "_REGISTRY", {})

    def f(a):
        return a

    assert register_transform("f")(f) is f
    assert D.registered("f").sha256 == D.source_sha256(f)

    def g(a):
        return a

    with pytest.raises(StateError, match="already registered by .*f"):
        register_transform("f")(g)
    with pytest.raises(TypeError, match="register_transform\\('my_feature'\\)"):
        register_transform(f)


def test_plugins_are_imported_where_the_pipeline_is_built_and_loaded(plugin):
    module, _ = plugin
    assert D.registered("charge_per_month") is None
    pipe = FeaturePipeline.from_spec(_spec(module))  # imports the plugin
    X = pipe.transform({"TotalCharges": [100.0, 50.0, None], "tenure": [10.0, 0.0, 3.0]}, n_rows=3)
    np.testing.assert_array_equal(X[:, -1], [10.0, 50.0, np.nan])
    text = pipe.to_json()
    # a fresh process: nothing registered, the module not imported yet; loading imports it from the pipeline's list
    D._REGISTRY.clear()
    sys.modules.pop(module)
    loaded = FeaturePipeline.from_json(text)
    assert D.registered("charge_per_month") is not None
    np.testing.assert_array_equal(loaded.transform({"TotalCharges": [100.0], "tenure": [10.0]})[:, -1], [10.0])


def test_a_changed_function_is_refused_on_load(plugin):
    module, path = plugin
    text = FeaturePipeline.from_spec(_spec(module)).to_json()
    path.write_text(PLUGIN.replace("np.maximum(tenure, floor)", "np.maximum(tenure, floor + 1)"))
    importlib.reload(sys.modules[module])  # a serving process running other code
    with pytest.raises(StateError, match="not the function the model was trained with") as info:
        FeaturePipeline.from_json(text)
    assert "charge_per_month" in str(info.value) and "per_month" in str(info.value)
    assert "retrain" in info.value.fix or "train" in info.value.fix


def test_a_missing_function_is_refused_on_load(plugin):
    module, path = plugin
    text = FeaturePipeline.from_spec(_spec(module)).to_json()
    D._REGISTRY.clear()
    path.write_text("# the transform was removed\n")
    importlib.reload(sys.modules[module])
    with pytest.raises(StateError, match="'charge_per_month', which is not registered") as info:
        FeaturePipeline.from_json(text)
    assert module in str(info.value) and "plugins" in info.value.fix


def test_an_unimportable_plugin_is_a_clear_error(plugin):
    with pytest.raises(StateError, match="plugin module 'no_such_tidal_plugin' cannot be imported") as info:
        FeaturePipeline.from_spec(parse_spec(dict(CHURN_SPEC, plugins=["no_such_tidal_plugin"])))
    assert "PYTHONPATH" in info.value.fix


def test_an_unregistered_function_in_the_spec_names_its_field(plugin):
    spec = parse_spec(dict(CHURN_SPEC, derived={"x": {"kind": "python", "function": "nope", "inputs": ["tenure"]}}))
    with pytest.raises(SpecError, match="'nope', which is not registered") as info:
        FeaturePipeline.from_spec(spec)
    assert info.value.details["field"] == "derived.x.function"


def test_source_must_be_readable(monkeypatch):
    monkeypatch.setattr(D, "_REGISTRY", {})
    namespace: dict = {}
    exec(textwrap.dedent("def f(a):\n    return a\n"), namespace)  # no file behind it
    with pytest.raises(StateError, match="source of transform 'console' cannot be read"):
        register_transform("console")(namespace["f"])
