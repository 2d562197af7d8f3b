"""The evaluation report: numbers against scikit-learn on the same held-out rows, slices, fairness
(judged against the spec's limits), the baseline and champion comparison, and the HTML page."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
import yaml
from sklearn.metrics import average_precision_score, log_loss, mean_squared_error, roc_auc_score

from tests.conftest import CHURN_SPEC, TELCO
from tests.serving.conftest import make_project
from tidal.project import Project
from tidal.spec import Fairness, parse_spec
from tidal.training.costs import binary_cost
from tidal.training.fairness import fairness_report
from tidal.training.report import MAX_POINTS, evaluation_report, load_heldout, score
from tidal.training.report_html import render_html, write_html

FAIRNESS = {"sensitive": ["gender", "SeniorCitizen"], "max_demographic_parity_difference": 0.1,
            "max_equal_opportunity_difference": 0.2}


def _with_rounds(project: Project, rounds: int) -> None:
    project.spec = project.spec.model_copy(update={"training": project.spec.training.model_copy(
        update={"num_boost_round": rounds})})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Telco churn: a weak version 1 in production (forced past the fairness limit), a stronger version 2."""
    project = make_project(tmp_path_factory.mktemp("report"), promote=False, versions=0, fairness=FAIRNESS)
    _with_rounds(project, 3)
    project.train()
    project.promote(1, force=True, reason="the champion of these tests")
    _with_rounds(project, 40)
    project.train()
    yield project
    project.close()


@pytest.fixture(scope="module")
def report(project):
    return evaluation_report(project.ws, project.spec, 2, champion="production")


def test_metrics_match_sklearn_on_the_same_rows(project, report):
    held = load_heldout(project.ws, project.spec, 2)
    y, s = held.y, held.scores
    m = report["metrics"]
    assert report["rows"] == len(y) == project.registry.load(2)[1].metrics["rows"]["test"]
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["log_loss"] == pytest.approx(log_loss(y, s))
    threshold = held.bundle.signature["threshold"]
    costs = project.spec.binary_costs
    assert report["decision"]["threshold"] == threshold
    assert m["cost_per_row"] == pytest.approx(binary_cost(y, s >= threshold, costs))
    assert m["cost_per_row_at_0_5"] == pytest.approx(binary_cost(y, s >= 0.5, costs))
    assert m["act_rate_at_0_5"] == pytest.approx(np.mean(s >= 0.5))
    # the held-out figures are the ones training stored: the rows were rebuilt exactly
    assert m["auc"] == pytest.approx(held.bundle.metrics["test"]["auc"])


def test_calibration_and_curves(project, report):
    held = load_heldout(project.ws, project.spec, 2)
    y, s = held.y, held.scores
    bins = report["calibration"]["bins"]
    assert len(bins) == 10 and sum(b["rows"] for b in bins) == len(y)
    which = np.minimum((s * 10).astype(int), 9)
    ece = sum(np.sum(which == b) / len(y) * abs(y[which == b].mean() - s[which == b].mean())
              for b in range(10) if np.any(which == b))
    assert report["calibration"]["ece"] == pytest.approx(ece)
    c = report["curves"]
    for xs, ys in ((c["roc"]["fpr"], c["roc"]["tpr"]), (c["pr"]["recall"], c["pr"]["precision"]),
                   (c["cost"]["threshold"], c["cost"]["cost_per_row"])):
        assert len(xs) == len(ys) <= MAX_POINTS
    assert (c["roc"]["fpr"][0], c["roc"]["tpr"][0], c["roc"]["fpr"][-1], c["roc"]["tpr"][-1]) == (0, 0, 1, 1)
    # the cost curve passes through the chosen threshold and 0.5 with the reported costs
    at = dict(zip(c["cost"]["threshold"], c["cost"]["cost_per_row"]))
    assert at[report["decision"]["threshold"]] == pytest.approx(report["metrics"]["cost_per_row"])
    assert at[0.5] == pytest.approx(report["metrics"]["cost_per_row_at_0_5"])
    assert min(c["cost"]["cost_per_row"]) >= report["metrics"]["cost_per_row"] - 2.0  # a sane scale
    imp = report["importance"]
    assert {r["feature"] for r in imp} == set(held.bundle.pipeline.output_names)
    assert sum(r["share"] for r in imp) == pytest.approx(1.0)
    assert imp == sorted(imp, key=lambda r: -r["gain"])


def test_slices_add_up_and_match_a_direct_computation(project, report):
    held = load_heldout(project.ws, project.spec, 2)
    slices = report["slices"]
    categorical = {n for n, f in project.spec.features.items() if f.type in ("categorical", "boolean")}
    assert set(slices) == categorical
    for name, s in slices.items():
        assert sum(g["rows"] for g in s["groups"]) == report["rows"], name
        assert sum(g["share"] for g in s["groups"]) == pytest.approx(1.0)
    assert slices["gender"]["sensitive"] and not slices["Contract"]["sensitive"]
    two_year = next(g for g in slices["Contract"]["groups"] if g["value"] == "Two year")
    mask = np.array([v == "Two year" for v in held.table.column("Contract").to_pylist()])
    y, s = held.y[mask], held.scores[mask]
    threshold = held.bundle.signature["threshold"]
    assert two_year["rows"] == mask.sum()
    assert two_year["act_rate"] == pytest.approx(np.mean(s >= threshold))
    assert two_year["positive_rate"] == pytest.approx(y.mean())
    assert two_year["cost_per_row"] == pytest.approx(binary_cost(y, s >= threshold, project.spec.binary_costs))
    assert two_year["auc"] == pytest.approx(roc_auc_score(y, s))
    assert {g["value"] for g in slices["SeniorCitizen"]["groups"]} == {"true", "false"}


def test_fairness_gaps_are_judged_against_the_limits(report):
    f = report["fairness"]
    senior = f["attributes"]["SeniorCitizen"]
    groups = {g["value"]: g for g in senior["groups"]}
    dpd = senior["demographic_parity_difference"]
    assert dpd["value"] == pytest.approx(abs(groups["true"]["act_rate"] - groups["false"]["act_rate"]))
    eod = senior["equal_opportunity_difference"]
    assert eod["value"] == pytest.approx(abs(groups["true"]["true_positive_rate"]
                                             - groups["false"]["true_positive_rate"]))
    # Telco's seniors churn far more often, so the model acts on them far more often
    assert dpd["value"] > 0.1 and dpd["passed"] is False
    assert f["passed"] is False
    assert any(m.startswith("fairness: demographic parity difference") and "on SeniorCitizen exceeds 0.1" in m
               for m in f["failures"])
    assert f["attributes"]["gender"]["demographic_parity_difference"]["passed"] is True
    assert not any("on gender" in m for m in f["failures"])


def test_a_deliberately_unfair_model_fails_and_small_groups_are_not_judged(churn_spec):
    table = pa.table({"gender": ["A"] * 100 + ["B"] * 100 + ["C"] * 5})
    y = np.tile([1.0, 0.0], 103)[:205]
    scores = np.concatenate([np.full(100, 0.9), np.full(100, 0.1), np.full(5, 0.0)])  # acts on A only
    spec = churn_spec.model_copy(update={"fairness": Fairness(
        sensitive=["gender"], max_demographic_parity_difference=0.2, max_equal_opportunity_difference=0.2,
        min_group_rows=20)})
    out = fairness_report(spec, table, y, scores, 0.5)
    gender = out["attributes"]["gender"]
    assert gender["demographic_parity_difference"]["value"] == pytest.approx(1.0)
    assert gender["equal_opportunity_difference"]["value"] == pytest.approx(1.0)
    assert (gender["demographic_parity_difference"]["highest"], gender["demographic_parity_difference"]["lowest"]) \
        == ("A", "B")  # C has 5 rows: shown, not judged
    assert [g["value"] for g in gender["groups"]] == ["A", "B", "C"]
    assert not gender["groups"][2]["judged_parity"]
    assert len(out["failures"]) == 2 and all("on gender exceeds 0.2" in m for m in out["failures"])
    # without limits the gaps are reported but nothing fails
    loose = spec.model_copy(update={"fairness": Fairness(sensitive=["gender"])})
    assert fairness_report(loose, table, y, scores, 0.5)["failures"] == []


def test_comparison_with_the_baseline_and_the_champion_on_the_same_rows(project, report):
    held = load_heldout(project.ws, project.spec, 2)
    _, champion = project.registry.load(1)
    stored = held.bundle.metrics["baseline"]
    assert stored["model"] == "LogisticRegression" and stored["test"]["rows"] == report["rows"]
    rows = {r["metric"]: r for r in report["comparison"]["rows"]}
    assert rows["auc"]["baseline"] == stored["test"]["auc"]
    champ_scores = score(champion, held.table)
    assert rows["auc"]["champion"] == pytest.approx(roc_auc_score(held.y, champ_scores))
    champ_cost = binary_cost(held.y, champ_scores >= champion.signature["threshold"], project.spec.binary_costs)
    assert rows["cost_per_row"]["champion"] == pytest.approx(champ_cost)
    assert rows["cost_per_row"]["better_than_champion"] == (report["metrics"]["cost_per_row"] <= champ_cost)
    assert report["comparison"]["champion"]["version"] == 1
    # same data and split: none of version 2's held-out rows were fitted on by version 1
    assert report["comparison"]["champion"]["rows"] == report["rows"]
    assert report["comparison"]["champion"]["rows_excluded"] == 0
    # no champion asked, or the champion is this very version
    assert evaluation_report(project.ws, project.spec, 2)["comparison"]["champion"] is None
    same = evaluation_report(project.ws, project.spec, 1, champion="production")["comparison"]["champion"]
    assert same["note"] == "the champion is this version"


def test_champion_is_compared_only_on_rows_it_was_not_fitted_on(tmp_path):
    import polars as pl

    telco = pl.read_csv(TELCO, infer_schema=False)
    telco.head(4000).write_csv(tmp_path / "old.csv")
    telco.slice(4000).write_csv(tmp_path / "new.csv")
    spec = dict(CHURN_SPEC, training={"num_boost_round": 20})
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    with Project.open(tmp_path / "tidal.yaml") as project:
        project.ingest(tmp_path / "old.csv")
        project.train()
        project.promote(1)
        project.ingest(tmp_path / "new.csv")
        project.train()  # a random split of all rows: some of its held-out rows trained version 1
        report = project.report(2, html=False)
        held = load_heldout(project.ws, project.spec, 2)
        from tidal.training.heldout import fitted_rows

        seen = set(fitted_rows(project.ws, project.spec, 1).column("customerID").to_pylist())
    champion = report["comparison"]["champion"]
    leaked = [cid in seen for cid in held.table.column("customerID").to_pylist()]
    assert 0 < sum(leaked) < len(leaked)
    assert champion["rows_excluded"] == sum(leaked) and champion["rows"] == len(leaked) - sum(leaked)
    assert champion["candidate_metrics"]["rows"] == champion["metrics"]["rows"] == champion["rows"]
    assert "that version 1 was not fitted on" in champion["note"]


def test_html_page_holds_the_plots_and_tables_and_works_offline(project, report, tmp_path):
    path = write_html(report, tmp_path / "r.html")
    html = path.read_text()
    assert html.count("<svg") == 5
    for caption in ("ROC curve", "Precision-recall curve", "Calibration", "Cost per row against threshold",
                    "Feature importance"):
        assert caption in html
    for table in ("checks", "comparison", "fairness", "slices", "calibration"):
        assert f'<table class="{table}">' in html
    assert "on SeniorCitizen exceeds 0.1" in html and "FAIL" in html
    assert "<script" not in html
    assert re.findall(r'(?:src|href)="', html) == []
    assert set(re.findall(r"https?://[^\"' ]+", html)) == {"http://www.w3.org/2000/svg"}
    # the Python API writes into the workspace's reports/ folder by default
    out = project.report(2)
    assert out["html"].endswith("reports/churn-v2.html") and (project.ws.root / "reports" / "churn-v2.html").exists()


def test_regression_report(tmp_path):
    features = {k: v for k, v in CHURN_SPEC["features"].items() if k != "MonthlyCharges"}
    spec = {"name": "charges", "task": "regression", "target": "MonthlyCharges", "features": features,
            "costs": {"under_per_unit": 2, "over_per_unit": 1}, "training": {"num_boost_round": 30},
            "fairness": {"sensitive": ["gender"]}}
    (tmp_path / "tidal.yaml").write_text(yaml.safe_dump(spec))
    with Project.open(tmp_path / "tidal.yaml") as project:
        project.ingest(TELCO)
        project.train()
        report = project.report(1, champion=None, html=tmp_path / "reg.html")
        held = load_heldout(project.ws, project.spec, 1)
    m = report["metrics"]
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(held.y, held.scores)))
    assert "calibration" not in report and "roc" not in report["curves"]
    assert len(report["curves"]["residuals"]["predicted"]) <= MAX_POINTS
    assert sum(report["curves"]["residual_histogram"]["counts"]) == report["rows"]
    assert report["comparison"]["baseline_model"] == "Ridge"
    assert sum(g["rows"] for g in report["slices"]["gender"]["groups"]) == report["rows"]
    assert report["fairness"]["applicable"] is False
    html = (tmp_path / "reg.html").read_text()
    assert html.count("<svg") == 4 and "Residual histogram" in html
    assert render_html(report).count("<svg") == 4


def test_fairness_spec_is_checked_where_it_is_written():
    from tidal.errors import SpecError

    with pytest.raises(SpecError) as err:
        parse_spec({**CHURN_SPEC, "fairness": {"sensitive": ["tenure", "nope"], "max_demographic_parity_difference": 0.1,
                                               "typo": 1}})
    assert "fairness.typo" in str(err.value)
    with pytest.raises(SpecError) as err:
        parse_spec({**CHURN_SPEC, "fairness": {"sensitive": ["tenure", "nope"]}})
    found = {p.location: p.message for p in err.value.problems}
    assert "numeric feature" in found["fairness.sensitive.0"] and "not a declared feature" in found["fairness.sensitive.1"]
    with pytest.raises(SpecError, match="no sensitive attribute"):
        parse_spec({**CHURN_SPEC, "fairness": {"max_equal_opportunity_difference": 0.1}})
    assert parse_spec(CHURN_SPEC).fairness.sensitive == []
