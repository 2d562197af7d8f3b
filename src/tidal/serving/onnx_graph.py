"""One ONNX graph for a bundle: the feature pipeline written in ONNX operators, then the LightGBM trees.

A device feeds raw columns, one 1-D input per feature, named after it:

============  ==========  ===========================================================
feature       ONNX type   value
============  ==========  ===========================================================
numeric       double      the number; NaN when missing
boolean       double      1 or 0; NaN when missing
categorical   string      the category's text; "" when missing
datetime      double      seconds since 1970-01-01T00:00:00Z; NaN when missing
============  ==========  ===========================================================

and reads ``score`` (double: the positive class's probability, or the predicted value) and
``decision`` (the business action as a string, or the cost-adjusted value as a double).

The pipeline's steps map to standard operators: a category's code is a ``LabelEncoder``
(ai.onnx.ml) lookup in the fitted vocabulary, with the unknown bucket as its default; a
datetime's hour, weekday and month are integer calendar arithmetic on the epoch seconds
(``Floor``/``Div``, the days-to-civil-date algorithm), so no string parsing is needed.
Derived features follow the model features, computed from the same graph inputs: ``log`` is
``Log(1 + x)`` where x > -1, ``clip`` two ``Where``s, ``bucketize`` the count of bounds at or
below x, ``ratio`` a ``Div`` guarded against a zero denominator and overflow, and a target encoding a
``LabelEncoder`` to an index into its fitted values (double, so the same numbers as the
pipeline's). A registered Python transform has no ONNX form: such a model is refused.
Where LightGBM reads a missing number as zero (a numeric feature without missing values in
training), the graph does the same before the trees, so NaN goes where LightGBM sends it.
The trees come from onnxmltools' ``convert_lightgbm`` and compare in float32, as
``TreeEnsembleClassifier``/``Regressor`` do; the export's parity check measures the effect.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tidal.errors import StateError
from tidal.features import derived as D
from tidal.features.pipeline import DATETIME_PARTS, FeaturePipeline

ONNX_OPSET = 15  # the newest onnxmltools' LightGBM converter supports
ML_OPSET = 3


def missing_types(booster: Any) -> dict[int, set[str]]:
    """Per matrix column, the missing-value rule LightGBM applies at its splits (None, Zero or NaN)."""
    out: dict[int, set[str]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            out.setdefault(node["split_feature"], set()).add(node["missing_type"])
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


class _Builder:
    """Nodes and constants of the preprocessing part, with fresh names."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"tidal_{hint}_{self._n}"

    def const(self, value: Any, dtype: Any = np.float64) -> str:
        from onnx import numpy_helper

        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], *, domain: str = "", **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def floor_div(self, x: str, d: float) -> str:
        return self.op("Floor", [self.op("Div", [x, self.const(d)])])

    def column(self, x: str) -> str:
        """[N] -> [N, 1]."""
        return self.op("Unsqueeze", [x, self.const([1], np.int64)])


def _datetime_parts(b: _Builder, t: str) -> list[str]:
    """hour, weekday (Monday 0) and month of epoch seconds ``t`` (UTC), NaN staying NaN."""
    days = b.floor_div(t, 86400.0)
    seconds = b.op("Sub", [t, b.op("Mul", [days, b.const(86400.0)])])
    hour = b.floor_div(seconds, 3600.0)
    shifted = b.op("Add", [days, b.const(3.0)])  # 1970-01-01 was a Thursday (3)
    weekday = b.op("Sub", [shifted, b.op("Mul", [b.floor_div(shifted, 7.0), b.const(7.0)])])
    # month from days since the epoch (H. Hinnant's civil_from_days)
    z = b.op("Add", [days, b.const(719468.0)])
    era = b.floor_div(z, 146097.0)
    doe = b.op("Sub", [z, b.op("Mul", [era, b.const(146097.0)])])
    yoe_num = b.op("Add", [b.op("Sub", [b.op("Sub", [doe, b.floor_div(doe, 1460.0)]), b.floor_div(doe, 146096.0)]),
                           b.floor_div(doe, 36524.0)])
    yoe = b.floor_div(yoe_num, 365.0)
    year_days = b.op("Sub", [b.op("Add", [b.op("Mul", [yoe, b.const(365.0)]), b.floor_div(yoe, 4.0)]),
                             b.floor_div(yoe, 100.0)])
    doy = b.op("Sub", [doe, year_days])
    mp = b.floor_div(b.op("Add", [b.op("Mul", [doy, b.const(5.0)]), b.const(2.0)]), 153.0)
    wrap = b.op("Mul", [b.op("Cast", [b.op("GreaterOrEqual", [mp, b.const(10.0)])], to=11), b.const(12.0)])
    month = b.op("Sub", [b.op("Add", [mp, b.const(3.0)]), wrap])
    parts = {"hour": hour, "dayofweek": weekday, "month": month}
    return [parts[p] for p in DATETIME_PARTS]


def refuse_unsupported(pipeline: FeaturePipeline) -> None:
    """Refuse a pipeline the graph cannot express: one with a registered Python transform."""
    python = {name: t.function for name, t in pipeline.derived.items() if isinstance(t, D.Python)}
    if python:
        names = ", ".join(f"{n!r} (transform {f!r})" for n, f in python.items())
        raise StateError(f"derived feature(s) {names} run registered Python code, which an ONNX graph cannot hold",
                         fix="serve this model natively (HTTP or batch scoring), or express the feature with the "
                             "built-in kinds (log, clip, bucketize, ratio, target_encoding) and retrain",
                         features=list(python))


def _derived(b: _Builder, t: D.Derived) -> str:
    """One derived feature's [N] double column, from the graph's raw inputs (as the pipeline computes it)."""
    from onnx import TensorProto

    nan = b.const(np.nan)
    if isinstance(t, D.Log):
        x = t.column
        return b.op("Where", [b.op("Greater", [x, b.const(-1.0)]), b.op("Log", [b.op("Add", [x, b.const(1.0)])]), nan])
    if isinstance(t, D.Clip):
        x = t.column
        if t.min is not None:
            x = b.op("Where", [b.op("Less", [x, b.const(t.min)]), b.const(t.min), x])
        if t.max is not None:
            x = b.op("Where", [b.op("Greater", [x, b.const(t.max)]), b.const(t.max), x])
        return x
    if isinstance(t, D.Bucketize):
        x = t.column
        above = b.op("GreaterOrEqual", [b.column(x), b.const(list(t.bounds))])  # [N, bounds]
        count = b.op("ReduceSum", [b.op("Cast", [above], to=TensorProto.DOUBLE), b.const([1], np.int64)], keepdims=0)
        return b.op("Where", [b.op("IsNaN", [x]), nan, count])
    if isinstance(t, D.Ratio):
        quotient = b.op("Div", [t.numerator, t.denominator])
        missing = b.op("Or", [b.op("Equal", [t.denominator, b.const(0.0)]), b.op("IsInf", [quotient])])
        return b.op("Where", [missing, nan, quotient])
    if isinstance(t, D.TargetEncoding):
        k = len(t.categories)  # index k: an unseen category (the prior); k + 1: missing ("")
        index = b.op("LabelEncoder", [t.column], domain="ai.onnx.ml", keys_strings=[*t.categories, ""],
                     values_int64s=[*range(k), k + 1], default_int64=k)
        return b.op("Gather", [b.const([*t.values, t.prior, t.missing]), index], axis=0)
    raise StateError(f"derived feature kind {t.kind!r} has no ONNX form")


def _as_lightgbm_reads(b: _Builder, x: str, rules: set[str]) -> str:
    """Missing values as LightGBM's numerical splits on this column read them (a categorical split
    always sends NaN right, as the converted trees do)."""
    if rules == {"None"}:  # no missing values in training: LightGBM reads NaN as 0
        return b.op("Where", [b.op("IsNaN", [x]), b.const(0.0), x])
    if rules == {"Zero"}:  # zero and NaN are both "missing": make both NaN
        return b.op("Where", [b.op("Equal", [x, b.const(0.0)]), b.const(np.nan), x])
    return x


def build_model(pipeline: FeaturePipeline, booster: Any, signature: dict[str, Any]) -> Any:
    """The ONNX ModelProto: raw feature columns in, ``score`` and ``decision`` out."""
    import onnx
    from onnx import TensorProto, helper
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    refuse_unsupported(pipeline)
    clashes = [n for n in pipeline.features if n in ("score", "decision") or n.startswith("tidal_")]
    if clashes:
        raise StateError(f"feature name(s) {', '.join(clashes)} would clash with the graph's own names",
                         fix="rename the feature(s) in the spec and retrain")
    width = len(pipeline.output_names)
    trees = convert_lightgbm(booster, name="tidal", initial_types=[("tidal_features", FloatTensorType([None, width]))],
                             zipmap=False, target_opset=ONNX_OPSET)
    b = _Builder()
    inputs, columns = [], []
    for name, kind in pipeline.features.items():
        elem = TensorProto.STRING if kind == "categorical" else TensorProto.DOUBLE
        inputs.append(helper.make_tensor_value_info(name, elem, [None]))
        if kind == "categorical":
            vocab = pipeline.vocabularies.get(name, [])
            codes = b.op("LabelEncoder", [name], domain="ai.onnx.ml", keys_strings=[*vocab, ""],
                         values_floats=[*map(float, range(len(vocab))), float("nan")], default_float=float(len(vocab)))
            columns.append(b.op("Cast", [codes], to=TensorProto.DOUBLE))
        elif kind == "datetime":
            columns += _datetime_parts(b, name)
        else:
            columns.append(name)
    columns += [_derived(b, t) for t in pipeline.derived.values()]
    rules, categorical = missing_types(booster), set(pipeline.categorical_indices)
    columns = [b.column(c if j in categorical else _as_lightgbm_reads(b, c, rules.get(j, set())))
               for j, c in enumerate(columns)]
    matrix = b.op("Concat", columns, axis=1)
    b.nodes.append(helper.make_node("Cast", [matrix], ["tidal_features"], name="tidal_to_float", to=TensorProto.FLOAT))
    pre = list(b.nodes)  # everything above feeds the trees; what follows reads their outputs

    graph = trees.graph
    _prefix_names(graph, "tidal_tree_", keep={"tidal_features"})  # no clash with a feature's name
    tree_outputs = [o.name for o in graph.output]
    if signature["task"] == "binary":
        positive = b.op("Gather", [tree_outputs[1], b.const(1, np.int64)], axis=1)
    else:
        positive = b.op("Reshape", [tree_outputs[0], b.const([-1], np.int64)])
    score = b.op("Cast", [positive], to=TensorProto.DOUBLE)
    tail = [helper.make_node("Identity", [score], ["score"], name="tidal_score")]
    if signature["task"] == "binary":
        act = b.op("GreaterOrEqual", [score, b.const(signature.get("threshold", 0.5))])
        labels = [b.const(np.array([str(signature.get(k))], dtype=object), None) for k in ("act", "no_act")]
        tail.append(helper.make_node("Where", [act, *labels], ["decision"], name="tidal_decision"))
        decision_type = TensorProto.STRING
    else:
        tail.append(helper.make_node("Add", [score, b.const(signature.get("offset", 0.0))], ["decision"],
                                     name="tidal_decision"))
        decision_type = TensorProto.DOUBLE
    post = b.nodes[len(pre):]
    new_graph = helper.make_graph(
        [*pre, *graph.node, *post, *tail], "tidal", inputs,
        [helper.make_tensor_value_info("score", TensorProto.DOUBLE, [None]),
         helper.make_tensor_value_info("decision", decision_type, [None])],
        initializer=[*graph.initializer, *b.initializers])
    opsets = {o.domain: o.version for o in trees.opset_import}
    opsets["ai.onnx.ml"] = max(opsets.get("ai.onnx.ml", 1), ML_OPSET)
    opsets[""] = max(opsets.get("", 1), ONNX_OPSET)
    model = helper.make_model(new_graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="tidal")
    model.ir_version = trees.ir_version
    onnx.checker.check_model(model)
    return model


def _prefix_names(graph: Any, prefix: str, *, keep: set[str]) -> None:
    """Rename every tensor and node of ``graph`` but ``keep`` with ``prefix``, in place."""
    def renamed(name: str) -> str:
        return name if not name or name in keep else prefix + name

    for node in graph.node:
        node.name = renamed(node.name)
        node.input[:] = [renamed(n) for n in node.input]
        node.output[:] = [renamed(n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = renamed(tensor.name)
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renamed(value.name)
