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
        from tidal.errors import ModelNotFound
        from tidal.registry.bundle import guard_model

        try:
            _, bundle = self.registry.load("production")
        except ModelNotFound:
            return None
        return guard_model(bundle)

    def ingest(self, path: str | Path | None = None, *, trust: str | None = None) -> list[Any]:
        """Ingest one file, or every source of the spec once when no path is given."""
        from tidal.data.ingest import ingest_file
        from tidal.data.ingester import ingest_once, open_sources

        model = self.guard_model()
        if path is not None:
            return [ingest_file(self.ws, self.spec, self.resolve_path(path), trust=trust or "high", model=model)]
        base = self.spec_path.parent if self.spec_path else Path.cwd()
        return ingest_once(self.ws, self.spec, open_sources(self.spec, base), model=model)

    # training --------------------------------------------------------------------------
    def train(self, *, data_versions: dict[str, Any] | None = None) -> Any:
        from tidal.training.trainer import train

        return train(self.ws, self.spec, data_versions=data_versions)

    def evaluate(self, version: int | str = "latest") -> dict[str, Any]:
        from tidal.training.trainer import evaluate

        return evaluate(self.ws, self.spec, version)

    def runs(self) -> list[dict[str, Any]]:
        from tidal.training.runs import RunTracker

        return RunTracker(self.ws).list()

    # registry --------------------------------------------------------------------------
    @property
    def registry(self) -> Any:
        from tidal.registry.registry import Registry

        return Registry(self.ws)

    def promote(self, version: int | str = "latest", *, actor: str | None = None, reason: str = "promoted",
                force: bool = False) -> dict[str, Any]:
        """Put a version in production after checking the spec's guardrails (``force`` skips them)."""
        from tidal.errors import Problem, StateError
        from tidal.updating.guardrails import check_guardrails

        row, bundle = self.registry.load(version)
        if not force:
            failures = check_guardrails(self.spec, bundle, bundle.metrics.get("test", {}))
            if failures:
                raise StateError(f"model version {row['version']} breaks the spec's guardrails",
                                 problems=[Problem("guardrails", f) for f in failures],
                                 fix="train a better model, relax the guardrail in the spec, or pass --force")
        else:
            reason = f"{reason} (guardrails skipped)"
        return self.registry.promote(row["version"], actor=actor, reason=reason)

    def rollback(self, *, actor: str | None = None, reason: str = "rollback") -> dict[str, Any]:
        return self.registry.rollback(actor=actor, reason=reason)

    def models(self) -> list[dict[str, Any]]:
        return self.registry.list()

    # serving, monitoring, updating -----------------------------------------------------
    def app(self) -> Any:
        from tidal.serving.app import create_app

        return create_app(self.spec, self.ws)

    def monitor(self) -> dict[str, Any]:
        from tidal.monitoring.monitor import run_monitor

        return run_monitor(self.ws, self.spec)

    def retrain(self, *, force: bool = False) -> dict[str, Any]:
        from tidal.updating.retrain import retrain

        return retrain(self.ws, self.spec, force=force)
