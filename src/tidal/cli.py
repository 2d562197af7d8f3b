"""The CLI: a thin face over :class:`tidal.project.Project`. Parses, calls the API, formats.

Errors become one clear line (plus the problems and the fix) and a non-zero exit code;
heavy libraries are imported inside commands so that ``tidal --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tidal: one spec file from raw data to a monitored, self-updating prediction service.")
spec_app = typer.Typer(no_args_is_help=True, help="Show or describe the spec.")
app.add_typer(spec_app, name="spec")

SpecOption = typer.Option("tidal.yaml", "--spec", "-s", envvar="TIDAL_SPEC", help="Path of the spec file.")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


def _out(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _project(spec: str) -> Any:
    from tidal.project import Project

    return Project.open(spec)


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[_fmt(r.get(c)) for c in columns])
    Console().print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if hasattr(v, "isoformat"):
        return v.isoformat(timespec="seconds")
    return "" if v is None else str(v)


@app.command()
def init(data: Path = typer.Argument(..., help="CSV or Parquet file to draft the spec from."),
         target: str = typer.Option(..., "--target", "-t", help="Column to predict."),
         out: Path = typer.Option(Path("tidal.yaml"), "--out", "-o", help="Where to write the draft."),
         name: Optional[str] = typer.Option(None, help="Name of the use case (default: the file's stem)."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")) -> None:
    """Draft a spec from a data file, for a person to review."""
    from tidal.data.draft import draft_spec, draft_yaml
    from tidal.errors import StateError

    if out.exists() and not force:
        raise StateError(f"{out} already exists", fix="pass --force to overwrite it, or --out to write elsewhere")
    spec, notes = draft_spec(data, target, name=name)
    if not Path(data).is_absolute():
        spec["sources"][0]["path"] = os.path.relpath(Path(data).resolve(), out.resolve().parent)
    out.write_text(draft_yaml(spec, notes))
    typer.echo(f"wrote {out}: {len(spec['features'])} features, {len(spec['exclude'])} excluded")
    for n in notes:
        typer.echo(f"  - {n}")


@spec_app.command("show")
def spec_show(spec: str = SpecOption) -> None:
    """Print the spec with every default filled in."""
    from tidal.spec import dump_spec, load_spec

    typer.echo(dump_spec(load_spec(spec)), nl=False)


@spec_app.command("schema")
def spec_schema() -> None:
    """Print the spec's JSON Schema."""
    from tidal.spec import spec_json_schema

    _out(spec_json_schema())


@app.command()
def ingest(file: Optional[Path] = typer.Argument(None, help="File to ingest (default: the spec's sources)."),
           follow: bool = typer.Option(False, "--follow", "-f",
                                       help="Keep reading the spec's sources for new batches until Ctrl-C."),
           max_batches: Optional[int] = typer.Option(None, "--max-batches", min=1,
                                                     help="Stop after this many batches."),
           source: Optional[list[str]] = typer.Option(None, "--source",
                                                      help="Read only the source of this name (repeatable)."),
           lookup: Optional[str] = typer.Option(None, "--lookup",
                                                help="Ingest rows of this lookup (FILE, or its spec source)."),
           spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Validate a batch and commit its accepted rows; quarantine the rest with reasons.

    Without FILE, read the spec's sources once, or continually with --follow.
    With --lookup NAME, the rows are the lookup's (FILE, or else lookups.NAME.source).

    Stopping or crashing at any point loses nothing and applies nothing twice.
    """
    if file is not None and (follow or max_batches or source):
        raise typer.BadParameter("FILE cannot be combined with --follow, --max-batches or --source",
                                 param_hint="FILE")
    if lookup is not None and (follow or max_batches or source):
        raise typer.BadParameter("--lookup reads one FILE or the lookup's source once; it cannot be combined "
                                 "with --follow, --max-batches or --source", param_hint="--lookup")
    with _project(spec) as project:
        if lookup is not None:
            reports = project.ingest_lookup(lookup, file)
        elif file is None and (follow or max_batches or source):
            _ingest_sources(project, follow=follow, max_batches=max_batches, names=source, as_json=as_json)
            return
        else:
            reports = project.ingest(file)
    if as_json:
        _out([r.as_dict() for r in reports])
        return
    for r in reports:
        if r.already_ingested:
            typer.echo(f"{r.source}: already ingested as batch {r.batch_id}; nothing to do")
            continue
        where = (f"lookup_{r.lookup} version {r.lookup_version}" if r.lookup
                 else f"events version {r.events_version}")
        typer.echo(f"{r.source}: batch {r.batch_id}: {r.rows_accepted} of {r.rows_total} rows accepted, "
                   f"{r.rows_quarantined} quarantined ({where})")
        for col, count in sorted(r.reasons.items()):
            typer.echo(f"  quarantined for {col}: {count}")


class _EnoughBatches(Exception):
    """Raised after a batch landed, to stop following at a batch boundary."""


def _ingest_sources(project: Any, *, follow: bool, max_batches: Optional[int], names: Optional[list[str]],
                    as_json: bool) -> None:
    """Run the ingester over the spec's sources; the first Ctrl-C stops after the current batch."""
    import signal
    import threading

    from tidal.data.ingester import follow as follow_sources, open_sources
    from tidal.errors import SpecError

    opened = open_sources(project.spec, project.spec_path.parent)
    unknown = [n for n in names or [] if n not in {s.name for s in opened}]
    if unknown:
        raise SpecError(f"no source named {', '.join(map(repr, unknown))} can be read by the ingester",
                        fix=f"use one of: {', '.join(s.name for s in opened) or '(none)'}; "
                            "http sources receive batches on the server's POST /v1/ingest")
    sources = [s for s in opened if not names or s.name in names]
    if not sources:
        typer.echo("no sources to read (http sources receive batches on the server's POST /v1/ingest)", err=True)
        return
    total = {"batches": 0, "accepted": 0, "quarantined": 0, "stop": False}
    # a shared (Redis) store of history features is kept in step batch by batch; a memory one lives in the server
    store = project.open_online_store() if project.spec.history and project.spec.online_store.kind == "redis" else None

    def on_batch(src: Any, r: Any) -> None:
        total["batches"] += 1
        if store is not None:
            project.update_history([r], store=store)
        if not r.already_ingested:
            total["accepted"] += r.rows_accepted
            total["quarantined"] += r.rows_quarantined
        if as_json:
            typer.echo(json.dumps(r.as_dict(), default=str))
        else:
            what = ("already ingested" if r.already_ingested else
                    f"{r.rows_accepted} accepted, {r.rows_quarantined} quarantined (events version {r.events_version})")
            if r.status == "held":
                what += " - batch held: " + "; ".join(c["message"] for c in r.failed_checks)
            typer.echo(f"{src.name}: batch {r.batch_id}: {what}; total {total['accepted']} accepted, "
                       f"{total['quarantined']} quarantined in {total['batches']} batches")
        if total["stop"] or (max_batches is not None and total["batches"] >= max_batches):
            raise _EnoughBatches

    def on_signal(signum: int, frame: Any) -> None:
        if total["stop"]:
            raise KeyboardInterrupt
        total["stop"] = True
        typer.echo("stopping after the current batch (Ctrl-C again to stop at once)", err=True)

    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        follow_sources(project.ws, project.spec, sources, max_batches=max_batches, on_batch=on_batch,
                       model=project.guard_model(), until=(lambda: total["stop"]) if follow else (lambda: True))
    except (_EnoughBatches, KeyboardInterrupt):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for s in opened:
            s.close()
        if store is not None:
            store.close()
    if not as_json:
        typer.echo(f"{'stopped' if total['stop'] else 'done'}: {total['batches']} batches, "
                   f"{total['accepted']} rows accepted, {total['quarantined']} quarantined", err=True)


quarantine_app = typer.Typer(no_args_is_help=True, help="Review held rows: list, show, release or drop them.")
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(all_batches: bool = typer.Option(False, "--all", help="Include released and dropped batches."),
                    spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Batches with quarantined rows, their status and main reasons."""
    from tidal.data.quarantine import list_quarantine

    with _project(spec) as project:
        rows = list_quarantine(project.ws, include_decided=all_batches)
    if as_json:
        _out(rows)
        return
    for r in rows:
        r["reasons"] = ", ".join(f"{k} ({v})" for k, v in r["reasons"].items())
    _table(rows, ["batch_id", "rows", "status", "source", "reasons"], "quarantine")


@quarantine_app.command("show")
def quarantine_show(batch_id: str, limit: int = typer.Option(20, help="Rows to show."),
                    spec: str = SpecOption) -> None:
    """A quarantined batch's rows with their reasons."""
    from tidal.data.quarantine import show_quarantine

    with _project(spec) as project:
        _out(show_quarantine(project.ws, batch_id, limit=limit))


@quarantine_app.command("release")
def quarantine_release(batch_id: str, reason: str = typer.Option(..., help="Why, for the record."),
                       spec: str = SpecOption) -> None:
    """Let a batch's held rows into the lake under their original batch id."""
    from tidal.data.quarantine import release
    from tidal.infra.actor import current_actor

    with _project(spec) as project:
        out = release(project.ws, project.spec, batch_id, actor=current_actor(), reason=reason)
    where = (f"lookup_{out['lookup']} version {out['lookup_version']}" if out.get("lookup")
             else f"events version {out['events_version']}")
    typer.echo(f"released {out['released']} rows of batch {batch_id} ({where})"
               + (f"; {out['still_failing']} still fail the schema and stay" if out["still_failing"] else ""))


@quarantine_app.command("drop")
def quarantine_drop(batch_id: str, reason: str = typer.Option(..., help="Why, for the record."),
                    spec: str = SpecOption) -> None:
    """Keep a batch's held rows out of the lake for good."""
    from tidal.data.quarantine import drop
    from tidal.infra.actor import current_actor

    with _project(spec) as project:
        out = drop(project.ws, batch_id, actor=current_actor(), reason=reason)
    typer.echo(f"dropped {out['dropped']} rows of batch {batch_id}")


@app.command()
def train(data_version: Optional[int] = typer.Option(
               None, "--data-version", help="Train on this version of the events table (default: the newest)."),
           tune: Optional[str] = typer.Option(
               None, "--tune", help="Tune LightGBM's parameters with Optuna first, within a budget: "
                                    "a time (90s, 5m, 1h) or a number of trials (30)."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="No tuning progress display."),
           spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Fit the feature pipeline and a LightGBM model; register it as a candidate."""
    versions = None if data_version is None else {"events": data_version}
    if tune is None:
        with _project(spec) as project:
            result = project.train(data_versions=versions)
    else:
        result = _train_tuned(spec, versions, tune, quiet=quiet or as_json)
    if as_json:
        _out({"run_id": result.run_id, "version": result.version, "metrics": result.metrics})
        return
    m = result.metrics["test"]
    figures = ", ".join(f"{k} {_fmt(m[k])}" for k in ("auc", "pr_auc", "rmse", "mae", "cost_per_row") if k in m)
    typer.echo(f"run {result.run_id}: model version {result.version} ({result.metrics['split']} split); "
               f"held-out {figures}")


def _train_tuned(spec: str, versions: Optional[dict[str, Any]], tune: str, *, quiet: bool) -> Any:
    """Train with tuning, showing each trial (number, best validation score, elapsed time) on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from tidal.training.tuning import parse_budget

    budget = parse_budget(tune)
    columns = [TextColumn("tuning"), BarColumn(), TextColumn("trial {task.fields[trial]}"),
               TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), TextColumn(f"of {budget}")]
    with _project(spec) as project, Progress(*columns, console=Console(stderr=True), disable=quiet,
                                             transient=True) as bar:
        task = bar.add_task("tune", total=budget.trials or budget.seconds, trial=0, best="-")

        def progress(info: dict[str, Any]) -> None:
            best = info["best_value"]
            bar.update(task, completed=info["trial"] if budget.trials else min(info["elapsed"], budget.seconds),
                       trial=info["trial"], best="-" if best is None else f"{info['metric']} {best:.5f}")

        result = project.train(data_versions=versions, tune=budget, progress=progress)
    summary = result.metrics.get("tuning") or {}
    if not quiet and summary:
        best, default = summary.get("best_value"), summary.get("default_value")
        typer.echo(f"tuned: {summary['trials']} trials in {summary['seconds']:.0f} s; validation {summary['metric']} "
                   f"{_fmt(default)} with the spec's parameters, {_fmt(best)} with the best", err=True)
    return result


@app.command()
def evaluate(version: str = typer.Argument("latest", help="Version number, 'latest' or 'production'."),
             spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Score a version's held-out rows again: ML metrics and business cost."""
    with _project(spec) as project:
        report = project.evaluate(version)
    if as_json:
        _out(report)
        return
    m = report["test"]
    typer.echo(f"model version {report['version']} on {m['rows']} held-out rows ({report['split']} split):")
    for key in ("auc", "pr_auc", "log_loss", "rmse", "mae"):
        if m.get(key) is not None:
            typer.echo(f"  {key:<10} {m[key]:.4f}")
    if "threshold" in m:
        typer.echo(f"  cost per prediction at the cost-optimal threshold {m['threshold']:.3f}: {m['cost_per_row']:.4f}")
        typer.echo(f"  cost per prediction at 0.5:                           {m['cost_per_row_at_0_5']:.4f}")
    else:
        typer.echo(f"  cost per prediction with the cost-optimal offset {m['offset']:+.3f}: {m['cost_per_row']:.4f}")
        typer.echo(f"  cost per prediction unadjusted:                     {m['cost_per_row_unadjusted']:.4f}")


@app.command()
def report(version: str = typer.Argument("latest", help="Version number, 'latest' or 'production'."),
           champion: str = typer.Option("production", "--champion",
                                        help="Version to compare with on the same held-out rows: a number, "
                                             "'production' or 'none'."),
           html: Optional[Path] = typer.Option(None, "--html",
                                               help="Where to write the HTML page (default: the workspace's "
                                                    "reports/ folder)."),
           spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """The evaluation report: metrics, business cost, calibration, slices, fairness, baseline and champion.

    Writes an HTML page with the plots (it works offline) and prints a summary.
    """
    with _project(spec) as project:
        r = project.report(version, champion=None if champion.lower() == "none" else champion,
                           html=html or True)
    if as_json:
        _out(r)
        return
    m = r["metrics"]
    typer.echo(f"model version {r['version']} on {r['rows']} held-out rows ({r['split']} split):")
    figures = [(k, m.get(k)) for k in ("auc", "pr_auc", "log_loss", "brier", "rmse", "mae")]
    if "calibration" in r:
        figures.append(("ECE", r["calibration"]["ece"]))
    typer.echo("  " + "  ".join(f"{k} {v:.4f}" for k, v in figures if v is not None))
    if r["task"] == "binary":
        typer.echo(f"  cost per row at the threshold {m['threshold']:.3f}: {m['cost_per_row']:.4f}; "
                   f"at 0.5: {m['cost_per_row_at_0_5']:.4f}")
    else:
        typer.echo(f"  cost per row with the offset {m['offset']:+.3f}: {m['cost_per_row']:.4f}; "
                   f"without: {m['cost_per_row_unadjusted']:.4f}")
    cost = next((row for row in r["comparison"]["rows"] if row["metric"] == "cost_per_row"), {})
    if cost.get("baseline") is not None:
        typer.echo(f"  baseline ({r['comparison']['baseline_model']}): cost per row {cost['baseline']:.4f} "
                   f"(this version is {'not worse' if cost['better_than_baseline'] else 'worse'})")
    champ = r["comparison"].get("champion")
    if champ and "better_than_champion" in cost:
        typer.echo(f"  champion version {champ['version']}: cost per row {cost['champion']:.4f} against this "
                   f"version's {cost['candidate_on_champion_rows']:.4f} on the {champ['rows']} held-out rows "
                   f"neither was fitted on (this version is {'not worse' if cost['better_than_champion'] else 'WORSE'})")
    elif champ:
        typer.echo(f"  champion: {champ['note']}")
    for name, a in r["fairness"].get("attributes", {}).items():
        gaps = [f"{label} {a[key]['value']:.3f}" + (f" (limit {a[key]['limit']:g}: "
                                                   f"{'pass' if a[key]['passed'] else 'FAIL'})"
                                                   if a[key]["passed"] is not None else "")
                for key, label in (("demographic_parity_difference", "parity gap"),
                                   ("equal_opportunity_difference", "opportunity gap")) if a[key]["value"] is not None]
        typer.echo(f"  fairness on {name}: " + ("; ".join(gaps) or "not judged (groups too small)"))
    for failure in r["fairness"]["failures"]:
        typer.echo(f"  FAIL {failure}")
    typer.echo(f"report: {r['html']}")


def _listing_group(name: str, help: str, listing: Any, list_help: str) -> tuple[typer.Typer, Any]:
    """A command group whose bare form lists (`tidal NAME` is `tidal NAME list`); returns it and the
    --spec option of its subcommands, which defaults to the spec given to the group."""
    group = typer.Typer(invoke_without_command=True, help=help)
    app.add_typer(group, name=name)
    spec_option = typer.Option(None, "--spec", "-s", help=f"Path of the spec file (default: the one given to `{name}`).")

    @group.callback()
    def default(ctx: typer.Context, spec: str = SpecOption, as_json: bool = JsonOption) -> None:
        ctx.obj = spec
        if ctx.invoked_subcommand is None:
            listing(spec, as_json)

    @group.command("list", help=list_help)
    def list_all(ctx: typer.Context, spec: Optional[str] = spec_option, as_json: bool = JsonOption) -> None:
        listing(spec or ctx.obj, as_json)

    return group, spec_option


models_app, ModelsSpecOption = _listing_group(
    "models", "Model versions: list them (the default) or show one's lineage.",
    lambda spec, as_json: _models_list(spec, as_json), "List model versions, their stages and approval status.")


def _models_list(spec: str, as_json: bool) -> None:
    with _project(spec) as project:
        rows = project.models()
        approvals = {r["version"]: project.registry.approval(r["version"])["status"] for r in rows}
    if as_json:
        _out(rows)
        return
    for r in rows:
        r["cost_per_row"] = r["metrics"].get("cost_per_row")
        r["auc"] = r["metrics"].get("auc")
        r["approval"] = approvals[r["version"]].replace("_", " ")
    _table(rows, ["version", "stage", "approval", "run_id", "auc", "cost_per_row", "created_at"], "model versions")


@models_app.command("show")
def models_show(ctx: typer.Context,
                version: str = typer.Argument(..., help="Version number, 'latest' or 'production'."),
                spec: Optional[str] = ModelsSpecOption, as_json: bool = JsonOption) -> None:
    """One version's lineage, approval status and history.

    Lineage: its run, data versions, spec hash, code version, training rows, the champion it was
    compared with, metrics and bundle manifest hash; history: every stage change and approval
    decision with who, why and when.
    """
    with _project(spec or ctx.obj) as project:
        lin = project.model_lineage(version)
    if as_json:
        _out(lin)
        return
    from tidal.training.runs import flatten

    run = lin["run"] or {}
    typer.echo(f"model version {lin['version']} ({lin['stage']}), registered {_fmt(lin['created_at'])}")
    duration = "-" if run.get("duration_s") is None else f"{run['duration_s']:.2f} s"
    typer.echo(f"  run {lin['run_id']} ({run.get('kind', 'record missing')}, {run.get('status', '-')}), "
               f"duration {duration}")
    typer.echo(f"  spec sha256 {lin['spec_sha256'] or '-'}")
    typer.echo(f"  code version {lin['code_version'] or '-'}")
    typer.echo(f"  bundle manifest sha256 {lin['bundle']['manifest_sha256']} ({lin['bundle']['path']})")
    typer.echo("  data versions: " + (", ".join(f"{k} {_fmt(v)}" for k, v in flatten(lin["data_versions"] or {}).items())
                                      or "-"))
    typer.echo("  training rows: " + (", ".join(f"{k} {v}" for k, v in (lin["training_rows"] or {}).items()) or "-"))
    champ = lin["champion"]
    typer.echo("  compared with: " + ("-" if champ is None else
                                      f"version {_fmt(champ['version']) or '-'} ({champ['compared_by']})"
                                      + (f": {champ['outcome']}" if champ.get("outcome") else "")))
    a = lin["approval"]
    needed = f" (needed for {', '.join(a['required_for'])})" if a["required_for"] else ""
    decided = f" by {a['by']} at {_fmt(a['at'])}: {a['reason']}" if a["by"] else ""
    typer.echo(f"  approval: {a['status'].replace('_', ' ')}{decided}{needed}")
    typer.echo("metrics:")
    for key, value in flatten(lin["metrics"] or {}).items():
        typer.echo(f"  {key:<40} {_fmt(value)}")
    typer.echo("history:")
    for e in lin["history"]:
        what = f"{e['from_stage'] or '-'} -> {e['to_stage']}" if e["event"] == "stage" else e["event"]
        typer.echo(f"  {_fmt(e['at'])}  {what:<26} by {e['actor']}: {e['reason']}")


@app.command()
def promote(version: str = typer.Argument(..., help="Version number or 'latest'."),
            reason: str = typer.Option("promoted by hand", help="Why, for the audit trail."),
            force: bool = typer.Option(False, "--force", help="Skip the spec's guardrails (recorded); never skips a required approval."),
            to: str = typer.Option("production", "--to",
                                   help="production, canary (answers serving.canary_share of traffic) or shadow "
                                        "(scores a copy of the traffic, answers nobody)."),
            new_api: bool = typer.Option(False, "--new-api",
                                         help="The version breaks the API contract on purpose: publish the next API "
                                              "version (/v2, ...) for it; the version it replaces goes on answering "
                                              "the old one's clients."),
            spec: str = SpecOption) -> None:
    """Put a version in production, canary or shadow (the one it replaces there steps down)."""
    with _project(spec) as project:
        row = project.promote(version, reason=reason, force=force, stage=to, new_api=new_api)
    typer.echo(f"model version {row['version']} is now in {to}")


@app.command()
def withdraw(stage: str = typer.Argument(..., help="canary or shadow."),
             reason: str = typer.Option("withdrawn by hand", help="Why, for the audit trail."),
             spec: str = SpecOption) -> None:
    """Take the canary or shadow version out of traffic."""
    with _project(spec) as project:
        row = project.registry.withdraw(stage, reason=reason)
    typer.echo(f"model version {row['version']} withdrawn from {stage}" if row else f"there is no {stage}")


@app.command()
def approve(version: str = typer.Argument(..., help="Version number or 'latest'."),
            reason: str = typer.Option(..., "--reason", help="Why, for the audit trail."),
            by: Optional[str] = typer.Option(None, "--by", help="Who approves (default: the operating-system user)."),
            spec: str = SpecOption) -> None:
    """Approve a version for the stages the spec's registry.approval_required_for gates."""
    with _project(spec) as project:
        status = project.approve(version, reason=reason, actor=by)
    where = (f"it may now be promoted to {' or '.join(status['required_for'])}" if status["required_for"]
             else "the spec requires no approval, so this is a record only")
    typer.echo(f"model version {status['version']} approved by {status['by']}; {where}")


@app.command()
def reject(version: str = typer.Argument(..., help="Version number or 'latest'."),
           reason: str = typer.Option(..., "--reason", help="Why, for the audit trail."),
           by: Optional[str] = typer.Option(None, "--by", help="Who rejects (default: the operating-system user)."),
           spec: str = SpecOption) -> None:
    """Reject a version: it may not go to canary or production until it is approved again."""
    with _project(spec) as project:
        status = project.reject(version, reason=reason, actor=by)
    typer.echo(f"model version {status['version']} rejected by {status['by']}; it cannot be promoted to canary or "
               "production")


contract_app = typer.Typer(no_args_is_help=True, help="The API contracts old clients rely on, one per API version.")
app.add_typer(contract_app, name="contract")


@contract_app.command("show")
def contract_show(api: Optional[str] = typer.Option(None, "--api", help="v1, v2, ... (default: the newest)."),
                  spec: str = SpecOption) -> None:
    """Print an API version's contract (the first promotion freezes /v1; --new-api the next ones)."""
    from tidal.errors import NotFound
    from tidal.registry.contracts import stored

    with _project(spec) as project:
        contract = stored(project.ws, api)
    if contract is None and api is not None:
        raise NotFound(f"there is no /{api} API version", fix="see `tidal contract list`")
    if contract is None:
        typer.echo("no contract yet: the first promoted model version freezes it")
        return
    _out(contract)


@contract_app.command("list")
def contract_list(spec: str = SpecOption) -> None:
    """Every API version: its inputs, and who answers it (production, a pinned version, or nobody: retired)."""
    from tidal.registry.contracts import all_contracts

    with _project(spec) as project:
        every = all_contracts(project.ws)
    if not every:
        typer.echo("no contract yet: the first promoted model version freezes /v1")
    for c in every:
        answered = ("retired " + c["retired"]["at"][:19] + " (" + c["retired"]["reason"] + ")" if c.get("retired")
                    else f"answered by model version {c['served_by']}" if c.get("served_by") is not None
                    else "answered by the production version")
        typer.echo(f"/{c['api']}  {len(c['inputs'])} inputs ({sum(i['required'] for i in c['inputs'].values())} "
                   f"required)  {answered}")


@contract_app.command("check")
def contract_check(version: str = typer.Argument("latest", help="Version number or 'latest'."),
                   spec: str = SpecOption) -> None:
    """Explain whether a model version may serve the newest API version without breaking its clients."""
    from tidal.registry.contracts import breaking, check, stored

    with _project(spec) as project:
        row, bundle = project.registry.load(version)
        contract = stored(project.ws)
        if contract is None:
            typer.echo(f"no contract yet: promoting version {row['version']} will freeze it")
            return
        problems = check(project.ws, bundle.signature)
    api = contract["api"]
    if problems:
        raise breaking(row["version"], api, problems)
    typer.echo(f"model version {row['version']} keeps the /{api} contract: every request valid under it is accepted "
               "and the response fields are the same")


@contract_app.command("retire")
def contract_retire(api: str = typer.Argument(..., help="The older API version to end, e.g. v1."),
                    reason: str = typer.Option(..., "--reason", help="Why, for the audit trail."),
                    by: Optional[str] = typer.Option(None, "--by", help="Who (default: the operating-system user)."),
                    spec: str = SpecOption) -> None:
    """End an older API version: its requests get 410 Gone naming the newest (servers see it within a reload tick)."""
    from tidal.infra.actor import current_actor
    from tidal.registry.contracts import retire

    with _project(spec) as project:
        retire(project.ws, api, actor=current_actor(by), reason=reason)
    typer.echo(f"/{api} is retired: its requests are answered 410 Gone")


@app.command()
def rollback(reason: str = typer.Option("rolled back by hand", help="Why, for the audit trail."),
             spec: str = SpecOption) -> None:
    """Put back the version that was in production before the current one."""
    with _project(spec) as project:
        row = project.rollback(reason=reason)
    typer.echo(f"rolled back: model version {row['version']} is in production again")


runs_app, RunSpecOption = _listing_group(
    "runs", "Training runs: list them (the default), show one, or compare two.",
    lambda spec, as_json: _runs_list(spec, as_json),
    "Every run with its kind, status, held-out figures, data version, duration and code version.")


def _runs_list(spec: str, as_json: bool) -> None:
    with _project(spec) as project:
        rows = project.runs()
    if as_json:
        _out(rows)
        return
    for r in rows:
        test = r["metrics"].get("test", {})
        r.update(auc=test.get("auc"), rmse=test.get("rmse"), cost_per_row=test.get("cost_per_row"),
                 events_version=r["data_versions"].get("events"),
                 duration_s=None if r["duration_s"] is None else f"{r['duration_s']:.2f}")
    columns = ["run_id", "kind", "status", "auc", "rmse", "cost_per_row", "events_version", "duration_s",
               "code_version"]
    _table(rows, [c for c in columns if c not in ("auc", "rmse") or any(r[c] is not None for r in rows)], "runs")


@runs_app.command("show")
def runs_show(ctx: typer.Context, run_id: str = typer.Argument(..., help="Run id (see `tidal runs list`)."),
              spec: Optional[str] = RunSpecOption, as_json: bool = JsonOption) -> None:
    """One run: parameters, metrics, data versions, code version, duration and artifact files."""
    with _project(spec or ctx.obj) as project:
        run = project.run(run_id)
    if as_json:
        _out(run)
        return
    from tidal.training.runs import flatten

    duration = "running" if run["duration_s"] is None else f"{run['duration_s']:.2f} s"
    typer.echo(f"run {run['run_id']} ({run['kind']}, {run['status']}), model version {_fmt(run['model_version']) or '-'}")
    typer.echo(f"  started {_fmt(run['started_at'])}, ended {_fmt(run['ended_at']) or '-'}, duration {duration}")
    typer.echo(f"  code version {run['code_version']}, spec sha256 {run['spec_sha256'][:12]}")
    for title in ("data_versions", "params", "metrics"):
        typer.echo(f"{title.replace('_', ' ')}:")
        for key, value in flatten(run[title] or {}).items():
            typer.echo(f"  {key:<40} {_fmt(value)}")
    typer.echo(f"artifacts ({run['artifact'] or 'none'}):")
    for f in run["artifacts"]:
        typer.echo(f"  {f['file']:<40} {f['bytes']:>12,} bytes")


@runs_app.command("compare")
def runs_compare(ctx: typer.Context, run_a: str = typer.Argument(..., help="First run id."),
                 run_b: str = typer.Argument(..., help="Second run id."),
                 only_differences: bool = typer.Option(False, "--only-differences", "-d",
                                                       help="Show only the entries that differ."),
                 spec: Optional[str] = RunSpecOption, as_json: bool = JsonOption) -> None:
    """Two runs side by side: parameters, metrics and data versions, with the differences."""
    with _project(spec or ctx.obj) as project:
        out = project.compare_runs(run_a, run_b)
    if as_json:
        _out(out)
        return
    for section in ("run", "data_versions", "params", "metrics"):
        rows = [r for r in out[section] if r["differs"] or not only_differences]
        if not rows:
            typer.echo(f"{section.replace('_', ' ')}: no differences")
            continue
        for r in rows:
            r.update({run_a: r["a"], run_b: r["b"], "difference": r.get("difference", "differs" if r["differs"] else "")})
        _table(rows, ["key", run_a, run_b, "difference"], section.replace("_", " "))


@app.command()
def materialize(spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Fill the online store (Redis) with each entity's history features as of its newest event in the lake.

    Harmless to repeat. A server fills its own store at start-up and after every ingest.
    """
    with _project(spec) as project:
        written = project.materialize()
        target = project.spec.online_store
    if as_json:
        _out({"entities_written": written})
        return
    typer.echo(f"online store ({target.kind}, namespace {target.namespace or project.spec.name}): "
               f"{written} entities written")


@app.command()
def serve(host: Optional[str] = typer.Option(None, help="Address to bind (default: the spec's)."),
          port: Optional[int] = typer.Option(None, help="Port to bind (default: the spec's)."),
          spec: str = SpecOption) -> None:
    """Serve predictions over HTTP; a new production model is picked up without a restart."""
    from tidal.serving.server import serve as run_server

    with _project(spec) as project:
        typer.echo(f"serving {project.spec.name} on http://{host or project.spec.serving.host}:"
                   f"{port or project.spec.serving.port}", err=True)
        run_server(project.spec, project.ws, host=host, port=port)


@app.command()
def score(input: str = typer.Argument(..., help="CSV or Parquet file, or Delta table folder, to score."),
          output: Path = typer.Option(..., "--output", "-o", help="Where to write the predictions (*.parquet or *.csv)."),
          version: str = typer.Option("production", "--version", help="Version number, 'latest' or 'production'."),
          chunk_rows: int = typer.Option(200_000, "--chunk-rows", min=1, help="Rows per chunk (bounds memory)."),
          engine: str = typer.Option("auto", "--engine", help="Model engine: auto, native (LightGBM) or compiled "
                                                               "(lleaves; auto uses it for large inputs when installed)."),
          strict: bool = typer.Option(False, "--strict", help="Refuse values that cannot be typed instead of "
                                                               "scoring them as missing."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
          spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Batch-score a file or table through the same pipeline and model as online serving.

    Streams the input chunk by chunk (bounded memory); the output holds the entity key (if any),
    prediction, probability, decision and model_version, and appears only when the run succeeds.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tidal.infra.signals import sigterm_raises

    columns = [TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    with _project(spec) as project, Progress(*columns, disable=quiet or as_json, transient=True) as bar:
        task = bar.add_task("score", total=None, rate="")

        def progress(done: int, total: Optional[int]) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=done, total=total, rate=f"{speed:,.0f} rows/s" if speed else "")

        with sigterm_raises(KeyboardInterrupt):  # a SIGTERM removes the temporary output like a Ctrl-C
            report = project.score(input, output, version=version, chunk_rows=chunk_rows, progress=progress,
                                   engine=engine, strict=strict)
    if as_json:
        _out(report.as_dict())
        return
    engines = ", ".join(f"{n:,} {name}" for name, n in report.engines.items()) or "none"
    typer.echo(f"scored {report.rows:,} rows with model version {report.model_version} in {report.seconds:.2f} s "
               f"({report.rows_per_second:,.0f} rows/s; model: {engines}) -> {report.output}")
    for col, n in sorted(report.invalid_values.items()):
        typer.echo(f"  warning: {n:,} value(s) of {col} could not be typed and were scored as missing", err=True)
    for col, n in sorted(report.missing_required.items()):
        typer.echo(f"  warning: {n:,} missing value(s) of {col}, which is not nullable, scored as missing", err=True)
    for note in report.notes:
        typer.echo(f"  note: {note}", err=True)


@app.command()
def export(format: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
           out: Optional[Path] = typer.Option(None, "--output", "-o",
                                              help="Where to write it (default: WORKSPACE/exports/NAME-vN.onnx)."),
           version: str = typer.Option("production", "--version", help="Version number, 'latest' or 'production'."),
           data: Optional[str] = typer.Option(None, "--data", help="Check parity on rows of this file or table "
                                                                    "(default: the version's held-out rows)."),
           rows: int = typer.Option(10_000, "--rows", min=1, help="Rows for the parity check."),
           spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Export pipeline and model as one ONNX graph for the edge, checked for parity and size."""
    with _project(spec) as project:
        report = project.export(out, format=format, version=version, data=data, rows=rows)
    if as_json:
        _out(report.as_dict())
        return
    typer.echo(f"exported model version {report.version} to {report.path}")
    typer.echo(f"  parity: max |onnx - native| = {report.max_abs_diff:.3g} on {report.rows:,} rows "
               f"(limit {report.tolerance:g})")
    typer.echo(f"  size: {report.onnx_bytes / 1e6:.3f} MB ONNX vs {report.bundle_bytes / 1e6:.3f} MB bundle "
               f"(budget {report.max_size_mb:g} MB)")
    for note in report.notes:
        typer.echo(f"  note: {note}")


@app.command()
def monitor(spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Drift and realised performance over the newest window of predictions; raise alerts."""
    with _project(spec) as project:
        result = project.monitor()
    if as_json:
        _out(result)
        return
    typer.echo(f"model version {result['model_version']}: {result['n_predictions']} predictions, status {result['status']}")
    for name, r in result.get("features", {}).items():
        stat = f"PSI {r['psi']:.3f}" if r.get("psi") is not None else ""
        p = r.get("ks_p", r.get("chi2_p"))
        typer.echo(f"  {name:<20} {stat:<12} p {p:.4f}  {'DRIFT' if r['drifted'] else ''}" if p is not None else f"  {name}")
    if "score_psi" in result:
        typer.echo(f"  score PSI {result['score_psi']:.3f}")
    perf = result.get("performance", {})
    if perf.get("status") == "ok":
        typer.echo(f"  realised on {perf['n_labels']} labels: cost per prediction {perf['cost_per_row']:.4f} "
                   f"(training {perf['baseline_cost_per_row']:.4f})")
    for alert in result.get("alerts", []):
        typer.echo(f"  ALERT {alert['kind']}: {alert['message']}")


@app.command()
def retrain(force: bool = typer.Option(False, "--force", help="Retrain even if the policy does not fire."),
            spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Apply the retraining policy: train a challenger and promote it only if it beats the champion."""
    with _project(spec) as project:
        result = project.retrain(force=force)
    if as_json:
        _out(result)
        return
    typer.echo(result["message"])
    for reason in result.get("reasons", []):
        typer.echo(f"  because: {reason}")


def main() -> None:
    from tidal.errors import TidalError

    try:
        code = app(standalone_mode=False)
    except TidalError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise
    if code == 130:  # typer turns a Ctrl-C (or a SIGTERM made one) into this exit code, returned here
        typer.echo("aborted", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
