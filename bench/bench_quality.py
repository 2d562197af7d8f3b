"""Quality: tidal driven by a spec alone against a hand-tuned LightGBM script, on three real data sets.

- Telco churn (examples/churn, 7,043 rows): no time order, so tidal's stratified random split;
  the spec is examples/churn/tidal.yaml without its ``training`` section (tidal's defaults).
- Bank marketing (45,211 rows, ``duration`` dropped: it is known only after the call and
  leaks the label): the file is in time order (May 2008 to November 2010) but has no
  timestamp, so a synthetic ``contacted_at`` (one minute per row, in file order) is added
  for both sides, and the test set is the end of the file.
- ULB credit-card fraud (284,807 rows, 0.17% positives): ``Time`` (seconds over two days,
  sorted) becomes the event time ``ts``; ``Time``, V1-V28 and ``Amount`` are the features.

Both sides see the same rows. tidal ingests the whole file and trains from its spec alone
(default parameters, no tuning); its held-out test set is the newest 20% with an event time
(the end of the file), else a stratified 20%. The hand-tuned script reads the same file
itself, encodes it itself (categorical columns as LightGBM-native categories), and trains
on tidal's training rows with early stopping on tidal's validation rows, with parameters an
expert would pick for each set (chosen on the validation rows, never the test rows).
Both pick their cost-optimal threshold on the validation rows, and both are scored on the
test rows: AUC, PR-AUC and the expected business cost per row at that threshold and at 0.5,
with the spec's cost matrix:

- churn (the example's spec): an offer costs 10, a churner who takes it is worth 30 net
  (TP -30), a missed churner costs 60 (FN 60);
- bank: a call costs 5, a subscription is worth 50: TP -45, FP 5, FN and TN 0;
- fraud: a review costs 5 (TP and FP 5), a missed fraud costs 100 (FN 100).

Goals: tidal within 0.005 AUC of the hand-tuned model or better, and a lower expected cost
at its threshold than at 0.5, on every set; training on the fraud data under 60 s without
tuning. ``--tune BUDGET`` also trains a tuned tidal model per set (``Project.train(tune=...)``).
About 2 minutes on 2 cores (plus the tuning budgets).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))

from tidal.project import Project  # noqa: E402
from tidal.spec import parse_spec  # noqa: E402
from tidal.training import costs as C  # noqa: E402
from tidal.training.dataset import labels_array, split_rows, training_table  # noqa: E402

AUC_GAP = 0.005
FRAUD_TRAIN_SECONDS = 60.0
HAND_ROUNDS, HAND_PATIENCE = 5000, 200


@dataclass
class Case:
    name: str
    spec: dict[str, Any]
    frame: pl.DataFrame  # the file as read, plus the synthetic event time where there is one
    categorical: list[str]
    numeric: list[str]
    hand_params: dict[str, Any]  # the expert's choices for this set
    notes: list[str] = field(default_factory=list)


_HAND_COMMON = {"objective": "binary", "verbosity": -1, "seed": 1, "num_threads": 2, "bagging_freq": 1}


def churn() -> Case:
    spec = yaml.safe_load((ROOT / "examples" / "churn" / "tidal.yaml").read_text())
    spec.pop("sources")
    spec.pop("training", None)  # the example pins a short schedule for its demo; measure tidal's defaults
    frame = pl.read_csv(ROOT / "examples" / "churn" / "telco_customer_churn.csv", infer_schema=False)
    feats = spec["features"]
    return Case("Telco churn", spec, frame,
                categorical=[c for c, f in feats.items() if f["type"] == "categorical"],
                numeric=[c for c, f in feats.items() if f["type"] != "categorical"],
                # small data, mostly additive effects: shallow trees, slow learning, strong smoothing
                hand_params={**_HAND_COMMON, "learning_rate": 0.02, "num_leaves": 7, "min_data_in_leaf": 50,
                             "feature_fraction": 0.7, "bagging_fraction": 0.8, "lambda_l2": 5.0,
                             "cat_smooth": 10, "metric": "auc"},
                notes=["no time order: stratified random split (seed 7)",
                       "spec: examples/churn/tidal.yaml without its `training` section (tidal's defaults)"])


def bank() -> Case:
    frame = pl.read_csv(DATA / "bank_marketing_full.csv", infer_schema=False).drop("duration")
    frame = frame.with_columns((pl.datetime(2008, 5, 1, time_zone="UTC")
                                + pl.duration(minutes=pl.int_range(pl.len()))).alias("contacted_at"))
    numeric = ["age", "balance", "day", "campaign", "pdays", "previous"]
    categorical = ["job", "marital", "education", "default", "housing", "loan", "contact", "month", "poutcome"]
    spec = {"name": "bank", "task": "binary", "target": "y", "positive_class": "yes", "event_time": "contacted_at",
            "features": {c: {"type": "numeric"} for c in numeric} | {c: {"type": "categorical"} for c in categorical},
            "costs": {"true_positive": -45, "false_positive": 5, "true_negative": 0, "false_negative": 0,
                      "act": "call", "no_act": "skip"}}
    return Case("bank marketing", spec, frame, categorical, numeric,
                hand_params={**_HAND_COMMON, "learning_rate": 0.02, "num_leaves": 7, "min_data_in_leaf": 50,
                             "feature_fraction": 0.7, "bagging_fraction": 0.8, "lambda_l2": 5.0,
                             "cat_smooth": 10, "metric": "auc"},
                notes=["`duration` dropped (leaks the label)",
                       "synthetic event time `contacted_at` = file row (one minute per row), for both sides: "
                       "test = the last 20% of the file"])


def fraud() -> Case:
    frame = pl.read_parquet(DATA / "creditcard_fraud_ulb.parquet")
    frame = frame.with_columns((pl.datetime(2013, 9, 1, time_zone="UTC")
                                + pl.duration(seconds=pl.col("Time"))).alias("ts"))
    numeric = ["Time"] + [f"V{i}" for i in range(1, 29)] + ["Amount"]
    spec = {"name": "fraud", "task": "binary", "target": "Class", "positive_class": "1", "event_time": "ts",
            "features": {c: {"type": "numeric"} for c in numeric},
            "costs": {"true_positive": 5, "false_positive": 5, "true_negative": 0, "false_negative": 100,
                      "act": "review", "no_act": "pass"}}
    return Case("credit-card fraud", spec, frame, [], numeric,
                # rare positives: a moderate positive weight, early stopping on average precision
                hand_params={**_HAND_COMMON, "learning_rate": 0.02, "num_leaves": 15, "min_data_in_leaf": 200,
                             "feature_fraction": 0.7, "bagging_fraction": 0.8, "lambda_l2": 5.0,
                             "scale_pos_weight": 5.0, "metric": "average_precision"},
                notes=["event time `ts` from `Time` (seconds, sorted): test = the last 20% (two days' newest)"])


def metrics(y: np.ndarray, valid_y: np.ndarray, valid_scores: np.ndarray, scores: np.ndarray,
            costs: Any) -> dict[str, Any]:
    threshold = C.optimal_threshold(valid_y, valid_scores, costs)
    return C.binary_metrics(y, scores, threshold, costs)


def run_tidal(case: Case, root: Path, tune: str | None) -> dict[str, Any]:
    root.mkdir(parents=True)
    data = root / "data.parquet"
    case.frame.write_parquet(data)
    (root / "tidal.yaml").write_text(yaml.safe_dump(case.spec, sort_keys=False))
    out: dict[str, Any] = {}
    with Project.open(root / "tidal.yaml") as project:
        started = time.perf_counter()
        report = project.ingest(data)[0]
        out["ingest_s"] = time.perf_counter() - started
        assert report.rows_quarantined == 0, f"{case.name}: {report.rows_quarantined} rows quarantined"
        started = time.perf_counter()
        result = project.train()
        out["train_s"] = time.perf_counter() - started
        out["fit_s"] = result.metrics["fit_seconds"]
        out["best_iteration"] = result.metrics["best_iteration"]
        run = project.run(result.run_id)
        out["imbalance"] = run["params"].get("imbalance", {})
        spec = project.spec
        table = training_table(project.ws, spec, result.data_versions)
        y = labels_array(table, spec)
        split = split_rows(table, spec, y)
        _, bundle = project.registry.load(result.version)
        scores = bundle.booster.predict(bundle.pipeline.transform_arrow(table))
        out["tidal"] = C.binary_metrics(y[split.test], scores[split.test], bundle.signature["threshold"],
                                        spec.binary_costs)
        assert abs(out["tidal"]["auc"] - result.metrics["test"]["auc"]) < 1e-9, "tidal's own held-out figures differ"
        out["baseline"] = result.metrics["baseline"]["test"]
        if tune:
            tuned = project.train(tune=tune)
            _, tb = project.registry.load(tuned.version)
            ts = tb.booster.predict(tb.pipeline.transform_arrow(table))
            out["tuned"] = C.binary_metrics(y[split.test], ts[split.test], tb.signature["threshold"], spec.binary_costs)
            out["tuning"] = project.run(tuned.run_id)["params"]["tuning"]
        out["split"], out["y"], out["table"] = split, y, table
    return out


def hand_tuned(case: Case, split: Any, table: Any) -> dict[str, Any]:
    """A hand-written LightGBM script on the raw file, trained on tidal's training rows."""
    frame = case.frame
    target = case.spec["target"]
    y = (frame[target].cast(pl.String) == str(case.spec["positive_class"])).to_numpy().astype(float)
    # tidal's rows are the file's rows in file order: check it before borrowing its split
    assert table.num_rows == frame.height, "tidal's training table and the file differ in rows"
    assert np.array_equal(labels_array(table, parse_spec(case.spec)), y), "rows are not in file order"
    columns = []
    for c in case.numeric:
        col = frame[c]
        columns.append(col.cast(pl.Float64, strict=False).to_numpy() if col.dtype == pl.String
                       else col.cast(pl.Float64).to_numpy())
    for c in case.categorical:  # codes learnt on the training rows; unseen and missing values are NaN
        values = frame[c].to_numpy()
        vocab = {v: i for i, v in enumerate(sorted({v for v in values[split.train] if v is not None}))}
        columns.append(np.array([vocab.get(v, np.nan) for v in values], dtype=float))
    X = np.column_stack(columns)
    cats = list(range(len(case.numeric), X.shape[1]))
    started = time.perf_counter()
    dtrain = lgb.Dataset(X[split.train], y[split.train], categorical_feature=cats, free_raw_data=False)
    dvalid = lgb.Dataset(X[split.valid], y[split.valid], categorical_feature=cats, reference=dtrain)
    booster = lgb.train(case.hand_params, dtrain, num_boost_round=HAND_ROUNDS, valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(HAND_PATIENCE, verbose=False)])
    seconds = time.perf_counter() - started
    costs = parse_spec(case.spec).binary_costs
    m = metrics(y[split.test], y[split.valid], booster.predict(X[split.valid]), booster.predict(X[split.test]), costs)
    return {"hand": m, "hand_s": seconds, "hand_iteration": booster.best_iteration}


def _row(label: str, m: dict[str, Any]) -> str:
    return (f"    {label:<22}{m['auc']:>8.4f}{m['pr_auc']:>9.4f}{m['cost_per_row']:>11.4f}"
            f"{m['cost_per_row_at_0_5']:>11.4f}{m['threshold']:>11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tune", default=None, help="also train a tuned tidal model per set, with this budget")
    parser.add_argument("--only", choices=["churn", "bank", "fraud"], action="append", help="run only these sets")
    args = parser.parse_args()
    makers = {"churn": churn, "bank": bank, "fraud": fraud}
    ok = True
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.only or list(makers):
            case = makers[key]()
            r = run_tidal(case, Path(tmp) / key, args.tune)
            r.update(hand_tuned(case, r["split"], r["table"]))
            t, h = r["tidal"], r["hand"]
            never = C.binary_cost(r["y"][r["split"].test], np.zeros(len(r["split"].test), bool),
                                  parse_spec(case.spec).binary_costs)
            rows = r["split"]
            print(f"{case.name}: {case.frame.height:,} rows; train {len(rows.train):,} / valid {len(rows.valid):,} / "
                  f"test {len(rows.test):,} ({r['split'].kind} split); test positives "
                  f"{t['positive_rate']:.2%}; cost per row acting on no one {never:.4f}")
            for note in case.notes:
                print(f"    - {note}")
            imb = r["imbalance"]
            print(f"    tidal: ingest {r['ingest_s']:.1f} s, train {r['train_s']:.1f} s (LightGBM {r['fit_s']:.1f} s, "
                  f"{r['best_iteration']} rounds; imbalance {imb.get('weighting')}, positive weight "
                  f"{imb.get('positive_weight', 1.0):.1f}); hand-tuned: {r['hand_s']:.1f} s, "
                  f"{r['hand_iteration']} rounds")
            print(f"    {'model':<22}{'AUC':>8}{'PR-AUC':>9}{'cost/row':>11}{'at 0.5':>11}{'threshold':>11}")
            print(_row("tidal (spec only)", t))
            if "tuned" in r:
                print(_row(f"tidal --tune {args.tune}", r["tuned"]))
            print(_row("hand-tuned LightGBM", h))
            print(_row("tidal's linear baseline", r["baseline"]))
            if "tuning" in r:
                s = r["tuning"]
                print(f"    tuning: {s['trials']} trials ({s['pruned']} pruned) in {s['seconds']:.0f} s, validation "
                      f"{s['metric']} {s['default_value'] or float('nan'):.5f} (defaults) -> {s['best_value']:.5f}")
            gap = h["auc"] - t["auc"]
            checks = {f"AUC within {AUC_GAP} of hand-tuned (gap {gap:+.4f})": gap <= AUC_GAP,
                      f"cost below cost at 0.5 ({t['cost_per_row']:.4f} vs {t['cost_per_row_at_0_5']:.4f})":
                          t["cost_per_row"] < t["cost_per_row_at_0_5"]}
            if key == "fraud":
                checks[f"training under {FRAUD_TRAIN_SECONDS:.0f} s ({r['train_s']:.1f} s)"] = \
                    r["train_s"] < FRAUD_TRAIN_SECONDS
            ok &= all(checks.values())
            print("    " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
            summary.append((case.name, t, h, gap))
    print("\nsummary (test rows)        tidal AUC  hand AUC     gap  tidal PR-AUC  hand PR-AUC  tidal cost  hand cost")
    for name, t, h, gap in summary:
        print(f"  {name:<24}{t['auc']:>10.4f}{h['auc']:>10.4f}{gap:>+8.4f}{t['pr_auc']:>14.4f}{h['pr_auc']:>13.4f}"
              f"{t['cost_per_row']:>12.4f}{h['cost_per_row']:>11.4f}")
    print("all goals met" if ok else "some goals missed")


if __name__ == "__main__":
    main()
