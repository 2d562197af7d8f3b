"""Hyperparameter tuning: Optuna's TPE sampler searches LightGBM's main parameters within a budget.

Each trial trains on the run's training rows with early stopping on its validation rows,
exactly as the final model does, and is scored by the validation metric early stopping
watches: the (imbalance-weighted) log-loss for binary tasks, l2 for regression. Log-loss is
a proper scoring rule over every row, so it ranks trials more steadily than the business
cost, which hinges on the few rows near one threshold and would be optimistic when
measured on the rows that also pick that threshold; each trial's validation cost at its own
cost-optimal threshold is still recorded beside it. The first trial is the run's current
parameters (clipped into the search space), so tuning never reports a worse validation
score than not tuning.

The budget is time (``"90s"``, ``"5m"``, ``"1h"``) or a number of trials (``"30"``). A
time budget is a deadline: no trial starts after it, and a trial still running when it
passes is stopped and dropped. Trials that trail the median of earlier ones at the same
round are pruned (after five complete trials), so more of the budget goes to promising
regions. The sampler is seeded with ``training.seed``: a trial budget gives the same study
every time.

Optuna is imported here only, when tuning is asked for.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import lightgbm as lgb
import numpy as np

from tidal.errors import InvalidArgument
from tidal.spec import Spec
from tidal.training import costs as C

PRUNE_AFTER_TRIALS = 5
PRUNE_WARMUP_ROUNDS = 50
REPORT_EVERY = 10
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
# name -> (low, high, log scale, integer)
SEARCH_SPACE: dict[str, tuple[float, float, bool, bool]] = {
    "num_leaves": (4, 128, True, True),
    "learning_rate": (0.01, 0.2, True, False),
    "min_data_in_leaf": (5, 300, True, True),
    "feature_fraction": (0.4, 1.0, False, False),
    "bagging_fraction": (0.5, 1.0, False, False),
    "lambda_l1": (1e-3, 10.0, True, False),
    "lambda_l2": (1e-3, 30.0, True, False),
}


@dataclass(frozen=True)
class Budget:
    """How long tuning may run: ``seconds`` of wall time or a number of ``trials`` (one of the two)."""

    seconds: float | None = None
    trials: int | None = None

    def __str__(self) -> str:
        if self.trials is not None:
            return f"{self.trials} trials"
        return f"{self.seconds:g} s"


def parse_budget(value: str | int | Budget) -> Budget:
    """``"90s"``, ``"5m"``, ``"1h"`` (a time) or ``"30"`` / ``30`` (trials) as a :class:`Budget`."""
    if isinstance(value, Budget):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return Budget(trials=value)
    match = _BUDGET.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0 or (not match.group(2) and "." in match.group(1)):
        raise InvalidArgument(f"the tuning budget must be a duration or a number of trials; got {value!r}",
                              fix="use e.g. 90s, 5m or 1h (time), or 30 (trials)")
    number, unit = float(match.group(1)), match.group(2).lower()
    if not unit:
        return Budget(trials=int(number))
    return Budget(seconds=number * _UNIT_SECONDS[unit])


def _suggest(trial: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, (low, high, log, integer) in SEARCH_SPACE.items():
        if integer:
            params[name] = trial.suggest_int(name, int(low), int(high), log=log)
        else:
            params[name] = trial.suggest_float(name, low, high, log=log)
    params["bagging_freq"] = 1
    return params


def _start_point(params: dict[str, Any]) -> dict[str, Any]:
    """The current parameters as a first trial, clipped into the search space."""
    point = {}
    for name, (low, high, _, integer) in SEARCH_SPACE.items():
        value = float(params.get(name, low if name.startswith("lambda") else (low + high) / 2))
        value = min(max(value, low), high)
        point[name] = int(round(value)) if integer else value
    return point


def tune_params(spec: Spec, base: dict[str, Any], dtrain: lgb.Dataset, dvalid: lgb.Dataset, *,
                valid: tuple[np.ndarray, np.ndarray], budget: str | int | Budget,
                progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search LightGBM parameters over ``base`` on (``dtrain``, ``dvalid``); return the study summary.

    The Datasets must be built with ``feature_pre_filter=False`` (trials change
    ``min_data_in_leaf``); ``valid`` holds the validation rows' matrix and labels, for the cost.

    ``progress`` is called after every trial with ``trial`` (its number, from 1), ``state``
    (complete, pruned), ``value``, ``best_value``, ``elapsed`` (seconds) and the budget
    (``budget_seconds`` or ``budget_trials``). The summary holds ``best_params`` (the searched
    keys only), ``best_value``, ``default_value`` (the first trial's, with ``base``),
    ``trials``, ``completed``, ``pruned``, ``metric``, ``seconds`` and the budget.
    """
    import optuna

    budget = parse_budget(budget)
    metric = "binary_logloss" if spec.task == "binary" else "l2"
    t = spec.training
    started = time.perf_counter()
    deadline = started + budget.seconds if budget.seconds is not None else math.inf
    valid_X, valid_y = valid

    def objective(trial: Any) -> float:
        params = {**base, **_suggest(trial), "metric": metric}

        def watch(env: Any) -> None:
            if time.perf_counter() > deadline:
                raise optuna.TrialPruned("the time budget ran out")
            if env.iteration % REPORT_EVERY == 0 and env.evaluation_result_list:
                trial.report(float(env.evaluation_result_list[0][2]), env.iteration)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            booster = lgb.train(params, dtrain, num_boost_round=t.num_boost_round, valid_sets=[dvalid],
                                callbacks=[lgb.early_stopping(t.early_stopping_rounds, verbose=False), watch])
        trial.set_user_attr("best_iteration", booster.best_iteration)
        if spec.task == "binary":
            scores = booster.predict(valid_X)
            threshold = C.optimal_threshold(valid_y, scores, spec.binary_costs)
            trial.set_user_attr("valid_cost_per_row", C.binary_cost(valid_y, scores >= threshold, spec.binary_costs))
        return float(booster.best_score["valid_0"][metric])

    def report(study: Any, trial: Any) -> None:
        if progress is None:
            return
        done = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
        progress({"trial": trial.number + 1, "state": trial.state.name.lower(), "value": value,
                  "best_value": min(tr.value for tr in done) if done else None,
                  "elapsed": time.perf_counter() - started, "budget_seconds": budget.seconds,
                  "budget_trials": budget.trials, "metric": metric})

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=t.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS,
                                               n_warmup_steps=PRUNE_WARMUP_ROUNDS, interval_steps=REPORT_EVERY))
        study.enqueue_trial(_start_point(base))
        study.optimize(objective, n_trials=budget.trials, timeout=budget.seconds, callbacks=[report],
                       catch=(lgb.basic.LightGBMError,))
    finally:
        optuna.logging.set_verbosity(verbosity)
    states = optuna.trial.TrialState
    complete = [tr for tr in study.trials if tr.state == states.COMPLETE]
    first = study.trials[0] if study.trials else None
    summary: dict[str, Any] = {
        "budget": str(budget), "budget_seconds": budget.seconds, "budget_trials": budget.trials,
        "metric": metric, "direction": "minimize", "sampler": "TPE", "seed": t.seed,
        "trials": len(study.trials), "completed": len(complete),
        "pruned": sum(tr.state == states.PRUNED for tr in study.trials),
        "default_value": first.value if first is not None and first.state == states.COMPLETE else None,
        "seconds": time.perf_counter() - started,
    }
    if not complete:  # the budget ran out inside the first trial: keep the current parameters
        return {**summary, "best_value": None, "best_trial": None, "best_params": {}}
    best = study.best_trial
    best_params = {**best.params, "bagging_freq": 1}
    return {**summary, "best_value": best.value, "best_trial": best.number + 1, "best_params": best_params,
            "best_iteration": best.user_attrs.get("best_iteration"),
            "best_valid_cost_per_row": best.user_attrs.get("valid_cost_per_row")}
