"""Training: fit the feature pipeline and a LightGBM model, evaluate, bundle and register."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from tidal.data.profile import build_profile, numeric_profile
from tidal.errors import StateError
from tidal.features.pipeline import FeaturePipeline
from tidal.infra.lake import lookup_table
from tidal.infra.workspace import Workspace
from tidal.registry.bundle import write_bundle
from tidal.registry.registry import Registry
from tidal.spec import LIGHTGBM_DEFAULTS, Spec, Training
from tidal.training import costs as C
from tidal.training.baseline import fit_baseline
from tidal.training.dataset import labels_array, split_rows, training_table
from tidal.training.imbalance import choose as choose_imbalance
from tidal.training.imbalance import sample_weights
from tidal.training.runs import RunTracker


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    version: int
    metrics: dict[str, Any]
    bundle_path: str
    data_versions: dict[str, Any]


def decide(spec: Spec, signature: dict[str, Any], y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Metrics of ``scores`` against ``y`` with the decision rule stored in ``signature``."""
    if spec.task == "binary":
        return C.binary_metrics(y, scores, signature["threshold"], spec.binary_costs)
    return C.regression_metrics(y, scores, signature["offset"], spec.regression_costs)


def label_slope(spec: Spec, y: np.ndarray, scores: np.ndarray) -> float | None:
    """How closely labels follow the scores: the slope of label on score (binary) or their
    correlation (regression). The poisoning guard compares new batches with it."""
    if len(y) < 10 or np.var(scores) == 0:
        return None
    if spec.task == "binary":
        return float(np.cov(scores, y)[0, 1] / np.var(scores, ddof=1))
    return float(np.corrcoef(scores, y)[0, 1])


def lgb_params(spec: Spec, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """LightGBM's parameters: tidal's fixed ones, its defaults, the spec's ``training.params``, then ``overrides``
    (tuned or given to :func:`train`), each over the one before."""
    params = {"objective": "binary" if spec.task == "binary" else "regression", "verbosity": -1,
              "seed": spec.training.seed, "deterministic": True, "num_threads": 2, "force_row_wise": True}
    params.update(LIGHTGBM_DEFAULTS)
    params.update(spec.training.params)
    params.update(overrides or {})
    return params


def fit(spec: Spec, table: pa.Table, *, params: dict[str, Any] | None = None, tune: Any = None,
        progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fit pipeline and model on ``table``; return everything a bundle and a run need.

    ``params`` override the spec's LightGBM parameters; with ``tune`` (a budget, see
    :func:`tidal.training.tuning.parse_budget`), Optuna searches them first on the same
    training and validation rows, and the best ones override ``params``.
    """
    y = labels_array(table, spec)
    if np.isnan(y).any():
        raise StateError("the training set has rows without a valid target")
    if spec.task == "binary" and len(np.unique(y)) < 2:
        raise StateError(f"the training set has only one class of {spec.target!r}",
                         fix=f"check positive_class ({spec.positive_label!r}) against the data")
    split = split_rows(table, spec, y)
    categories = {n: table.column(n).take(split.train).to_pylist() for n, f in spec.model_features.items()
                  if f.type == "categorical"}
    pipeline = FeaturePipeline.from_spec(spec).fit(categories, target=y[split.train])
    X = pipeline.transform_arrow(table)
    # target encodings: training rows take out-of-fold values; every other row the fit on all training rows
    for j, values in pipeline.out_of_fold(categories, y[split.train], seed=spec.training.seed).items():
        X[split.train, j] = values
    cats = pipeline.categorical_indices
    imbalance = (choose_imbalance(spec.training.imbalance, y[split.train], lgb_params(spec, params))
                 if spec.task == "binary" else None)
    # tuning trials change min_data_in_leaf on the same Datasets, which LightGBM's pre-filter forbids
    ds_params = {"feature_pre_filter": False} if tune is not None else None
    dtrain = lgb.Dataset(X[split.train], y[split.train], weight=sample_weights(y[split.train], imbalance),
                         categorical_feature=cats, free_raw_data=False, feature_name=pipeline.output_names,
                         params=ds_params)
    # the validation rows carry the same weights: early stopping watches the loss the booster minimises
    dvalid = lgb.Dataset(X[split.valid], y[split.valid], weight=sample_weights(y[split.valid], imbalance),
                         reference=dtrain, categorical_feature=cats, params=ds_params)
    tuning = None
    if tune is not None:
        from tidal.training.tuning import tune_params

        tuning = tune_params(spec, lgb_params(spec, params), dtrain, dvalid, valid=(X[split.valid], y[split.valid]),
                             budget=tune, progress=progress)
        params = {**(params or {}), **tuning["best_params"]}
    final_params = lgb_params(spec, params)
    started = time.perf_counter()
    booster = lgb.train(final_params, dtrain, num_boost_round=spec.training.num_boost_round,
                        valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(spec.training.early_stopping_rounds, verbose=False)])
    fit_seconds = time.perf_counter() - started
    valid_scores = booster.predict(X[split.valid])
    if spec.task == "binary":
        signature_rule = {"threshold": C.optimal_threshold(y[split.valid], valid_scores, spec.binary_costs)}
    else:
        signature_rule = {"offset": C.optimal_offset(y[split.valid], valid_scores, spec.regression_costs)}
    test_scores = booster.predict(X[split.test])
    test_metrics = decide(spec, signature_rule, y[split.test], test_scores)
    test_metrics["label_slope"] = label_slope(spec, y[split.test], test_scores)
    metrics = {"test": test_metrics,
               "valid": decide(spec, signature_rule, y[split.valid], valid_scores),
               "split": split.kind, "rows": {"train": len(split.train), "valid": len(split.valid),
                                              "test": len(split.test)},
               "best_iteration": booster.best_iteration, "fit_seconds": fit_seconds}
    metrics["baseline"] = fit_baseline(spec, X, y, split, cats)  # held-out metrics only; the model is not kept
    train_rows = table.take(split.train)
    kinds = {n: f.type for n, f in spec.model_features.items()}
    reference = {"features": build_profile({n: (train_rows.column(n).to_numpy(zero_copy_only=False)
                                                if kinds[n] == "numeric" else train_rows.column(n).to_pylist())
                                            for n in kinds}, kinds),
                 "score": numeric_profile(valid_scores)}
    if spec.task == "binary":
        seen = sorted(set(table.column(spec.target).cast(pa.string()).to_pylist()) - {None, spec.positive_label})
        signature_rule["negative_class"] = seen[0] if len(seen) == 1 else f"not_{spec.positive_label}"
    if tuning is not None:
        metrics["tuning"] = {k: tuning[k] for k in ("trials", "completed", "best_value", "default_value", "metric",
                                                    "seconds")}
    return {"booster": booster, "pipeline": pipeline, "metrics": metrics, "rule": signature_rule,
            "reference": reference, "split": split, "params": final_params, "imbalance": imbalance,
            "tuning": tuning}


def signature_for(spec: Spec, pipeline: FeaturePipeline, rule: dict[str, Any]) -> dict[str, Any]:
    inputs = {n: {"type": f.type, "nullable": f.nullable} for n, f in spec.features.items()}
    sig: dict[str, Any] = {"task": spec.task, "target": spec.target, "inputs": inputs,
                           "features": pipeline.output_names, **rule}
    if spec.lookups:  # model inputs the server joins itself, by keys, as of the event time
        sig["lookups"] = {name: {"keys": lk.keys, "time": lk.time, "features": list(lk.features),
                                 "max_age_hours": lk.max_age_hours} for name, lk in spec.lookups.items()}
        # what requests carry instead (as the request model has them): the keys, required, and the event time
        for key in spec.lookup_keys:
            inputs[key] = {"type": "categorical", "nullable": False}
        inputs[spec.event_time] = {"type": "datetime", "nullable": True}
    if spec.task == "binary":
        sig.update(positive_class=spec.positive_label, act=spec.binary_costs.act, no_act=spec.binary_costs.no_act)
    return sig


def train(ws: Workspace, spec: Spec, *, data_versions: dict[str, Any] | None = None, kind: str = "train",
          actor: str | None = None, params: dict[str, Any] | None = None, tune: Any = None,
          progress: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train on the lake (at ``data_versions``, default the newest), bundle and register a candidate.

    ``params`` override the spec's LightGBM parameters for this run. ``tune`` (a budget:
    ``"5m"``, ``"90s"``, ``"1h"`` or a number of trials) searches them with Optuna first
    (:mod:`tidal.training.tuning`), calling ``progress`` after each trial. The run records
    the parameters used, the imbalance weighting and the study's summary.
    """
    if tune is not None:
        from tidal.training.tuning import parse_budget

        tune = parse_budget(tune)  # a malformed budget fails before any work
    versions = dict(data_versions or {"events": ws.lake.version("events")})
    if versions.get("events") is None:
        raise StateError("there is no accepted data to train on", fix="run `tidal ingest FILE` first")
    if spec.lookups:  # each lookup table's version too (newest unless given), so the run can be rebuilt
        given = versions.get("lookups") or {}
        versions["lookups"] = {name: given[name] if given.get(name) is not None
                               else ws.lake.version(lookup_table(name)) for name in spec.lookups}
        empty = [name for name, v in versions["lookups"].items() if v is None]
        if empty:
            raise StateError(f"lookup {', '.join(map(repr, empty))} has no data to join",
                             fix="ingest it first: `tidal ingest --lookup NAME [FILE]`")
    tracker = RunTracker(ws)
    run_params: dict[str, Any] = {"lightgbm": lgb_params(spec, params), "training": spec.training.model_dump()}
    run_id = tracker.start(kind=kind, spec=spec, params=run_params, data_versions=versions)
    try:
        table = training_table(ws, spec, versions)
        out = fit(spec, table, params=params, tune=tune, progress=progress)
        run_params = {**run_params, "lightgbm": out["params"]}
        if out["imbalance"] is not None:
            run_params["imbalance"] = out["imbalance"]
        if out["tuning"] is not None:
            run_params["tuning"] = out["tuning"]
        signature = signature_for(spec, out["pipeline"], out["rule"])
        metrics = {**out["metrics"], "data_rows": table.num_rows}
        path = ws.bundles / run_id
        manifest_sha = write_bundle(path, model_text=out["booster"].model_to_string(), pipeline=out["pipeline"],
                                    signature=signature, metrics=metrics, reference=out["reference"])
        version = Registry(ws).register(run_id=run_id, bundle_path=str(path), manifest_sha256=manifest_sha,
                                        metrics=metrics["test"], actor=actor)
    except BaseException:
        tracker.finish(run_id, status="failed", metrics={})
        raise
    tracker.finish(run_id, status="finished", metrics=metrics, artifact=str(path), params=run_params)
    return TrainResult(run_id=run_id, version=version, metrics=metrics, bundle_path=str(path),
                       data_versions=versions)


def evaluate(ws: Workspace, spec: Spec, version: int | str = "latest") -> dict[str, Any]:
    """Rebuild a version's held-out rows from its run's recorded data and score them again."""
    registry = Registry(ws)
    row, bundle = registry.load(version)
    run = RunTracker(ws).get(row["run_id"])
    # the split settings the run used, not today's spec
    spec = spec.model_copy(update={"training": Training.model_validate(run["params"]["training"])})
    table = training_table(ws, spec, run["data_versions"])
    y = labels_array(table, spec)
    split = split_rows(table, spec, y)
    test = table.take(split.test)
    scores = bundle.booster.predict(bundle.pipeline.transform_arrow(test))
    metrics = decide(spec, bundle.signature, y[split.test], scores)
    metrics["label_slope"] = label_slope(spec, y[split.test], scores)
    return {"version": row["version"], "run_id": row["run_id"], "split": split.kind, "test": metrics,
            "size_mb": bundle.size_bytes / 1e6}
