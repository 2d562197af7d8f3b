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
           spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Validate a batch and commit its accepted rows; quarantine the rest with reasons.

    Without FILE, read the spec's sources once, or continually with --follow.

    Stopping or crashing at any point loses nothing and applies nothing twice.
    """
    if file is not None and (follow or max_batches or source):
        raise typer.BadParameter("FILE cannot be combined with --follow, --max-batches or --source",
                                 param_hint="FILE")
    with _project(spec) as project:
        if file is None and (follow or max_batches or source):
            _ingest_sources(project, follow=follow, max_batches=max_batches, names=source, as_json=as_json)
            return
        reports = project.ingest(file)
    if as_json:
        _out([r.as_dict() for r in reports])
        return
    for r in reports:
        if r.already_ingested:
            typer.echo(f"{r.source}: already ingested as batch {r.batch_id}; nothing to do")
            continue
        typer.echo(f"{r.source}: batch {r.batch_id}: {r.rows_accepted} of {r.rows_total} rows accepted, "
                   f"{r.rows_quarantined} quarantined (events version {r.events_version})")
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

    def on_batch(src: Any, r: Any) -> None:
        total["batches"] += 1
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
    typer.echo(f"released {out['released']} rows of batch {batch_id} (events version {out['events_version']})"
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
           spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Fit the feature pipeline and a LightGBM model; register it as a candidate."""
    with _project(spec) as project:
        result = project.train(data_versions=None if data_version is None else {"events": data_version})
    if as_json:
        _out({"run_id": result.run_id, "version": result.version, "metrics": result.metrics})
        return
    m = result.metrics["test"]
    figures = ", ".join(f"{k} {_fmt(m[k])}" for k in ("auc", "pr_auc", "rmse", "mae", "cost_per_row") if k in m)
    typer.echo(f"run {result.run_id}: model version {result.version} ({result.metrics['split']} split); "
               f"held-out {figures}")


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
def models(spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """List model versions and their stages."""
    with _project(spec) as project:
        rows = project.models()
    if as_json:
        _out(rows)
        return
    for r in rows:
        r["cost_per_row"] = r["metrics"].get("cost_per_row")
        r["auc"] = r["metrics"].get("auc")
    _table(rows, ["version", "stage", "run_id", "auc", "cost_per_row", "created_at"], "model versions")


@app.command()
def promote(version: str = typer.Argument(..., help="Version number or 'latest'."),
            reason: str = typer.Option("promoted by hand", help="Why, for the audit trail."),
            force: bool = typer.Option(False, "--force", help="Skip the spec's guardrails (recorded)."),
            spec: str = SpecOption) -> None:
    """Put a version in production (the previous one is archived)."""
    with _project(spec) as project:
        row = project.promote(version, reason=reason, force=force)
    typer.echo(f"model version {row['version']} is now in production")


@app.command()
def rollback(reason: str = typer.Option("rolled back by hand", help="Why, for the audit trail."),
             spec: str = SpecOption) -> None:
    """Put back the version that was in production before the current one."""
    with _project(spec) as project:
        row = project.rollback(reason=reason)
    typer.echo(f"rolled back: model version {row['version']} is in production again")


@app.command()
def runs(spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """List training runs."""
    with _project(spec) as project:
        rows = project.runs()
    if as_json:
        _out(rows)
        return
    for r in rows:
        r["auc"] = r["metrics"].get("test", {}).get("auc")
        r["events_version"] = r["data_versions"].get("events")
    _table(rows, ["run_id", "kind", "status", "auc", "events_version", "code_version"], "runs")


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
        app(standalone_mode=False)
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


if __name__ == "__main__":
    main()
