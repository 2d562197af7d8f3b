"""The evaluation report as one self-contained HTML page: Jinja2 and inline SVG, no script, no CDN.

Binary tasks get ROC, precision-recall, calibration and cost-against-threshold plots;
regression gets residuals against the prediction, the residual histogram and cost against
the offset; both get feature importance, the checks, the comparison, fairness and slice tables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from tidal.training import svg

TEMPLATES = Path(__file__).parent / "templates"
TOP_FEATURES = 20


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def _pct(v: Any) -> str:
    return "—" if v is None else f"{v:.1%}"


def _verdict(passed: bool | None) -> str:
    return "not judged" if passed is None else ("pass" if passed else "FAIL")


def _verdict_css(passed: bool | None) -> str:
    return "na" if passed is None else ("pass" if passed else "fail")


def _plots(r: dict[str, Any]) -> list[tuple[str, Markup]]:
    c = r["curves"]
    plots = []
    if r["task"] == "binary":
        if "roc" in c:
            plots.append(("ROC curve", svg.line_chart(
                [{"name": f"model (AUC {r['metrics']['auc']:.3f})", "x": c["roc"]["fpr"], "y": c["roc"]["tpr"]}],
                title="ROC curve", x_label="false positive rate", y_label="true positive rate",
                x_range=(0, 1), y_range=(0, 1), diagonal=True)))
            pos = r["metrics"]["positive_rate"]
            plots.append(("Precision-recall curve", svg.line_chart(
                [{"name": f"model (PR-AUC {r['metrics']['pr_auc']:.3f})", "x": c["pr"]["recall"],
                  "y": c["pr"]["precision"]},
                 {"name": f"positive rate {pos:.2f}", "x": [0, 1], "y": [pos, pos], "dash": True, "color": "#999"}],
                title="Precision-recall curve", x_label="recall", y_label="precision",
                x_range=(0, 1), y_range=(0, 1))))
        bins = [b for b in r["calibration"]["bins"] if b["rows"]]
        plots.append(("Calibration (reliability)", svg.line_chart(
            [{"name": f"model (ECE {r['calibration']['ece']:.3f})", "x": [b["mean_score"] for b in bins],
              "y": [b["observed_rate"] for b in bins], "points": True}],
            title="Calibration", x_label="mean predicted probability", y_label="observed positive rate",
            x_range=(0, 1), y_range=(0, 1), diagonal=True)))
        plots.append(("Cost per row against threshold", svg.line_chart(
            [{"name": "cost per row", "x": c["cost"]["threshold"], "y": c["cost"]["cost_per_row"]}],
            title="Cost against threshold", x_label="threshold (act when score ≥ threshold)",
            y_label="cost per row", x_range=(0, 1),
            vlines=[(r["decision"]["threshold"], f"chosen {r['decision']['threshold']:.2f}"), (0.5, "0.5")])))
    else:
        plots.append(("Residuals against prediction", svg.line_chart(
            [{"name": "rows (sample)", "x": c["residuals"]["predicted"], "y": c["residuals"]["residual"],
              "points": True, "line": False}],
            title="Residuals", x_label="prediction", y_label="actual - prediction")))
        h = c["residual_histogram"]
        plots.append(("Residual histogram", svg.histogram(h["edges"], h["counts"], title="Residual histogram",
                                                          x_label="actual - prediction")))
        plots.append(("Cost per row against offset", svg.line_chart(
            [{"name": "cost per row", "x": c["cost"]["offset"], "y": c["cost"]["cost_per_row"]}],
            title="Cost against offset", x_label="offset added to the prediction", y_label="cost per row",
            vlines=[(r["decision"]["offset"], "chosen"), (0.0, "0")])))
    top = r["importance"][:TOP_FEATURES]
    plots.append(("Feature importance (gain share)", svg.bar_chart(
        [f["feature"] for f in top], [f["share"] for f in top], title="Feature importance",
        x_label="share of total gain")))
    return [(caption, Markup(s)) for caption, s in plots]


def _cards(r: dict[str, Any]) -> list[tuple[str, str]]:
    m = r["metrics"]
    if r["task"] == "binary":
        return [("AUC", _num(m.get("auc"))), ("PR-AUC", _num(m.get("pr_auc"))),
                ("cost per row at the threshold", _num(m["cost_per_row"])),
                ("cost per row at 0.5", _num(m["cost_per_row_at_0_5"])),
                ("calibration error (ECE)", _num(r["calibration"]["ece"])), ("act rate", _pct(m["act_rate"]))]
    return [("RMSE", _num(m["rmse"])), ("MAE", _num(m["mae"])), ("cost per row", _num(m["cost_per_row"])),
            ("cost per row, no offset", _num(m["cost_per_row_unadjusted"]))]


def _checks(r: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per judged check: fairness gaps, and cost against the baseline and the champion."""
    rows = []
    for name, a in r["fairness"].get("attributes", {}).items():
        for key, label in (("demographic_parity_difference", "demographic parity difference"),
                           ("equal_opportunity_difference", "equal opportunity difference")):
            g = a[key]
            rows.append({"check": f"fairness: {label} on {name}", "value": _num(g["value"]),
                         "limit": _num(g["limit"]), "verdict": _verdict(g["passed"]), "css": _verdict_css(g["passed"])})
    cost = next((row for row in r["comparison"]["rows"] if row["metric"] == "cost_per_row"), None)
    if cost and "better_than_champion" in cost:  # gated: a manual promotion refuses a costlier candidate
        ok = cost["better_than_champion"]
        rows.append({"check": "business cost: cost per row against the champion, on the same rows",
                     "value": _num(cost["candidate_on_champion_rows"]), "limit": _num(cost["champion"]),
                     "verdict": _verdict(ok), "css": _verdict_css(ok)})
    if cost and cost.get("baseline") is not None:  # informational: the gate does not compare with the baseline
        ok = cost["better_than_baseline"]
        rows.append({"check": "cost per row against the linear baseline (not gated)", "value": _num(cost["candidate"]),
                     "limit": _num(cost["baseline"]), "verdict": "better" if ok else "worse",
                     "css": "pass" if ok else "warn"})
    return rows


def render_html(report: dict[str, Any]) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, pct=_pct)
    template = env.get_template("report.html")
    return template.render(r=report, cards=_cards(report), checks=_checks(report), plots=_plots(report),
                           champion=report["comparison"].get("champion"),
                           act_rate_at_half=report["metrics"].get("act_rate_at_0_5"),
                           verdict=_verdict, verdict_css=_verdict_css)


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """Render ``report`` to ``path`` (written whole, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(report), encoding="utf-8")
    os.replace(tmp, path)
    return path
