"""The Python API: one :class:`Project` per spec file. The CLI and the server are thin faces over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidal.infra.workspace import Workspace
from tidal.spec import Spec, load_spec


class Project:
    """A use case: its spec and its workspace.

    >>> project = Project.open("tidal.yaml")        # doctest: +SKIP
    >>> project.ingest("data.csv"); project.train(); project.promote("latest")  # doctest: +SKIP
    """

    def __init__(self, spec: Spec, *, spec_path: Path | None = None, workspace: Workspace) -> None:
        self.spec = spec
        self.spec_path = spec_path
        self.ws = workspace

    @classmethod
    def open(cls, spec_path: str | Path, *, create: bool = True) -> "Project":
        spec_path = Path(spec_path).resolve()
        spec = load_spec(spec_path)
        root = Path(spec.workspace.path)
        if not root.is_absolute():
            root = spec_path.parent / root
        ws = Workspace(root, metadata_url=spec.workspace.metadata_url)
        if create:
            ws.create()
        return cls(spec, spec_path=spec_path, workspace=ws)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resolve_path(self, path: str | Path) -> Path:
        path = Path(path)
        if not path.is_absolute() and self.spec_path is not None and not path.exists():
            candidate = self.spec_path.parent / path
            if candidate.exists():
                return candidate
        return path

    # data ------------------------------------------------------------------------------
    def guard_model(self) -> Any:
        """The production model as the poisoning guard uses it, or None before one exists."""
        if self.ws.store.production() is None:  # nothing to load (and LightGBM not worth importing yet)
            return None
        from tidal.errors import ModelNotFound
        from tidal.features.history import with_joined_features
        from tidal.registry.bundle import guard_model

        try:
            _, bundle = self.registry.load("production")
        except ModelNotFound:
            return None
        return with_joined_features(guard_model(bundle), self.spec, self.ws.lake)

    def ingest(self, path: str | Path | None = None, *, trust: str | None = None) -> list[Any]:
        """Ingest one file, or every source of the spec once when no path is given."""
        from tidal.data.ingest import ingest_file
        from tidal.data.ingester import ingest_once, open_sources

        model = self.guard_model()
        if path is not None:
            reports = [ingest_file(self.ws, self.spec, self.resolve_path(path), trust=trust or "high", model=model)]
        else:
            base = self.spec_path.parent if self.spec_path else Path.cwd()
            reports = ingest_once(self.ws, self.spec, open_sources(self.spec, base), model=model)
        if self.spec.history and self.spec.online_store.kind == "redis":  # a shared store: keep it in step now
            self.update_history(reports)
        return reports

    def open_online_store(self) -> Any:
        """The spec's online store of history features (the caller closes it)."""
        from tidal.features.online_history import open_history_store

        return open_history_store(self.spec)

    def update_history(self, reports: list[Any], *, store: Any = None) -> int:
        """Recompute from the lake the online store rows of the entities these ingest reports' batches
        touched (out-of-order events included); return the rows written. ``store`` defaults to the spec's."""
        from tidal.features.online_history import batch_entities, materialize

        ids = [r.batch_id for r in reports if r.rows_accepted and not r.already_ingested and r.lookup is None]
        entities = batch_entities(self.ws.lake, self.spec, ids) if self.spec.history else []
        if not entities:
            return 0
        target = store if store is not None else self.open_online_store()
        try:
            return materialize(target, self.ws.lake, self.spec, entities=entities)
        finally:
            if store is None:
                target.close()

    def materialize(self, *, store: Any = None) -> int:
        """Fill the online store with each entity's history features as of its newest event in the lake
        (like Feast's ``materialize``); return the entities written. Running it again is harmless: the
        store keeps the newest event time and an equal one replaces (a recomputation).

        ``store`` defaults to the spec's ``online_store``; the in-process store lives inside the server,
        which fills it at start-up, so only a Redis store can be filled from here.
        """
        from tidal.errors import SpecError, StateError
        from tidal.features.online_history import materialize

        if not self.spec.history:
            raise SpecError("the spec has no history features, so there is nothing to materialize",
                            fix="declare them under history (e.g. txn_7d: {agg: count, window: 7d})")
        if store is None and self.spec.online_store.kind != "redis":
            raise StateError("the online store is in process (online_store.kind: memory): the server fills it "
                             "from the lake at start-up, and no other process can reach it",
                             fix="set online_store: {kind: redis} to share one store between processes")
        target = store if store is not None else self.open_online_store()
        try:
            return materialize(target, self.ws.lake, self.spec)
        finally:
            if store is None:
                target.close()

    def ingest_lookup(self, name: str, path: str | Path | None = None) -> list[Any]:
        """Ingest one file of lookup ``name``, or read its spec source once when no path is given."""
        from tidal.data.lookups import ingest_lookup_file, ingest_lookup_source

        if path is not None:
            return [ingest_lookup_file(self.ws, self.spec, name, self.resolve_path(path))]
        base = self.spec_path.parent if self.spec_path else Path.cwd()
        return ingest_lookup_source(self.ws, self.spec, name, base)

    # training --------------------------------------------------------------------------
    def train(self, *, data_versions: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
              tune: str | int | None = None, progress: Any = None) -> Any:
        """Train and register a candidate. ``params`` override the spec's LightGBM parameters; ``tune``
        (``"5m"``, ``"90s"``, ``"1h"`` or a number of trials) searches them with Optuna first, calling
        ``progress`` with each trial's figures (see :func:`tidal.training.tuning.tune_params`)."""
        from tidal.training.trainer import train

        return train(self.ws, self.spec, data_versions=data_versions, params=params, tune=tune, progress=progress)

    def evaluate(self, version: int | str = "latest") -> dict[str, Any]:
        from tidal.training.trainer import evaluate

        return evaluate(self.ws, self.spec, version)

    def report(self, version: int | str = "latest", *, champion: int | str | None = "production",
               html: str | Path | bool = True) -> dict[str, Any]:
        """The evaluation report of ``version`` (see :func:`tidal.training.report.evaluation_report`),
        compared with ``champion`` (None: no champion). With ``html``, also written as an HTML page,
        by default into the workspace's ``reports/`` folder; its path is the report's ``html``."""
        from tidal.training.report import evaluation_report
        from tidal.training.report_html import write_html

        report = evaluation_report(self.ws, self.spec, version, champion=champion)
        if html:
            path = self.ws.root / "reports" / f"{self.spec.name}-v{report['version']}.html" if html is True else html
            report["html"] = str(write_html(report, path))
        return report

    def runs(self) -> list[dict[str, Any]]:
        from tidal.training.runs import RunTracker

        return RunTracker(self.ws).list()

    def run(self, run_id: str) -> dict[str, Any]:
        """One run: parameters, metrics, data versions, code version, duration and artifact files."""
        from tidal.training.runs import RunTracker

        return RunTracker(self.ws).show(run_id)

    def compare_runs(self, run_a: str, run_b: str) -> dict[str, Any]:
        """Two runs side by side: parameters, metrics and data versions, and what differs."""
        from tidal.training.runs import RunTracker

        return RunTracker(self.ws).compare(run_a, run_b)

    # registry --------------------------------------------------------------------------
    @property
    def registry(self) -> Any:
        from tidal.registry.registry import Registry

        return Registry.for_spec(self.ws, self.spec)

    def promote(self, version: int | str = "latest", *, actor: str | None = None, reason: str = "promoted",
                force: bool = False, stage: str = "production", new_api: bool = False) -> dict[str, Any]:
        """Put a version in production after the promotion gate (``force`` skips it, and the audit says so).
        ``new_api`` publishes the next API version for a version that breaks the newest contract
        (:meth:`Registry.promote`).

        The gate checks the spec's guardrails (size, latency, metric floor), its fairness limits,
        and that the version's held-out cost per row is no worse than the production model's on
        the same rows; a refusal lists every failed check by name. A stage listed in the spec's
        ``registry.approval_required_for`` also needs the version approved; ``force`` does not skip that.
        """
        from tidal.errors import Problem, StateError
        from tidal.updating.guardrails import promotion_gate

        row = self.registry.resolve(version)
        self.registry.check_approval(row["version"], stage)  # before the gate's work; --force never skips it
        if not force and stage != "shadow":  # a shadow answers nobody: nothing to gate
            failures = promotion_gate(self.ws, self.spec, row["version"])
            if failures:
                checks = [f.partition(": ") for f in failures]
                raise StateError(f"model version {row['version']} fails the promotion gate: "
                                 + ", ".join(dict.fromkeys(c for c, _, _ in checks)),
                                 problems=[Problem(c, m) for c, _, m in checks],
                                 fix="train a better model, relax the limit in the spec, or pass --force")
        else:
            reason = (f"{reason} (guardrails skipped with --force: size, latency, metric floor, fairness and "
                      "business cost were not checked)")
        return self.registry.promote(row["version"], actor=actor, reason=reason, stage=stage, new_api=new_api)

    def rollback(self, *, actor: str | None = None, reason: str = "rollback") -> dict[str, Any]:
        return self.registry.rollback(actor=actor, reason=reason)

    def models(self) -> list[dict[str, Any]]:
        return self.registry.list()

    def approve(self, version: int | str, *, reason: str, actor: str | None = None) -> dict[str, Any]:
        """Sign a version off for the stages the spec's ``registry.approval_required_for`` gates (audited)."""
        return self.registry.approve(version, reason=reason, actor=actor)

    def reject(self, version: int | str, *, reason: str, actor: str | None = None) -> dict[str, Any]:
        """Refuse a version: it may not go to canary or production until approved again (audited)."""
        return self.registry.reject(version, reason=reason, actor=actor)

    def model_lineage(self, version: int | str = "latest") -> dict[str, Any]:
        """A version's lineage: run, data versions, spec hash, code version, training rows, the champion it was
        compared with, metrics, bundle manifest hash, approval status and its audit trail."""
        return self.registry.lineage(version)

    # serving, monitoring, updating -----------------------------------------------------
    def app(self) -> Any:
        from tidal.serving.app import create_app

        return create_app(self.spec, self.ws)

    def score(self, input: str | Path, output: str | Path, *, version: int | str = "production",
              chunk_rows: int = 200_000, progress: Any = None, engine: str = "auto", strict: bool = False) -> Any:
        """Batch-score a CSV, Parquet or Delta input into a Parquet or CSV output (see :func:`score_file`)."""
        from tidal.serving.batch import score_file

        row, bundle = self.registry.load(version)
        return score_file(self.spec, bundle, row["version"], self.resolve_path(input), output, chunk_rows=chunk_rows,
                          progress=progress, engine=engine, strict=strict, lake=self.ws.lake)

    def export(self, path: str | Path | None = None, *, format: str = "onnx", version: int | str = "production",
               data: str | Path | None = None, rows: int = 10_000) -> Any:
        """Export a version for the edge: pipeline and model in one ONNX graph, checked for parity and size.

        Parity is checked on ``rows`` rows of ``data`` when given, else on the version's held-out
        rows (topped up with its other training rows). The default path is
        ``WORKSPACE/exports/NAME-vVERSION.onnx``.
        """
        from tidal.errors import DataValidationError
        from tidal.serving.export import export_onnx

        if format != "onnx":
            raise DataValidationError(f"unsupported export format {format!r}", fix="use --format onnx")
        row, bundle = self.registry.load(version)
        if data is not None:
            from tidal.serving.batch import typed_rows

            check = typed_rows(self.spec, bundle, self.resolve_path(data), rows, lake=self.ws.lake)
        else:
            check = self._training_rows(row, rows)
        if path is None:
            path = self.ws.root / "exports" / f"{self.spec.name}-v{row['version']}.onnx"
        return export_onnx(bundle, path, check_rows=check, version=row["version"],
                           max_size_mb=self.spec.guardrails.max_model_size_mb)

    def _training_rows(self, row: dict[str, Any], rows: int) -> Any:
        """Up to ``rows`` rows of a version's training set, its held-out rows first."""
        import numpy as np

        from tidal.spec import Training
        from tidal.training.dataset import labels_array, split_rows, training_table
        from tidal.training.runs import RunTracker

        run = RunTracker(self.ws).get(row["run_id"])
        spec = self.spec.model_copy(update={"training": Training.model_validate(run["params"]["training"])})
        table = training_table(self.ws, spec, run["data_versions"])
        split = split_rows(table, spec, labels_array(table, spec))
        return table.take(np.concatenate([split.test, split.valid, split.train])[:rows])

    def monitor(self) -> dict[str, Any]:
        """Run the monitor; on a performance alert, roll back if the previous version does better."""
        from tidal.monitoring.monitor import run_monitor
        from tidal.updating.rollback import rollback_on_performance

        result = run_monitor(self.ws, self.spec)
        decision = rollback_on_performance(self.ws, self.spec, result)
        if decision is not None:
            result["rollback"] = decision
        return result

    def retrain(self, *, force: bool = False) -> dict[str, Any]:
        from tidal.updating.retrain import retrain

        return retrain(self.ws, self.spec, force=force)
