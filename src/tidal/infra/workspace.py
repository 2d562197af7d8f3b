"""The workspace: one folder holding the metadata database, the lake and the model bundles."""

from __future__ import annotations

from pathlib import Path

from tidal.infra.lake import Lake
from tidal.infra.metadata import MetadataStore


class Workspace:
    """Paths and stores of one workspace. Opening creates nothing; :meth:`create` does."""

    def __init__(self, root: str | Path, *, metadata_url: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.metadata_url = metadata_url or f"sqlite:///{self.root / 'metadata.db'}"
        self._store: MetadataStore | None = None

    @property
    def lake(self) -> Lake:
        return Lake(self.root / "lake")

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def store(self) -> MetadataStore:
        if self._store is None:
            self._store = MetadataStore(self.metadata_url)
        return self._store

    def create(self) -> "Workspace":
        for sub in ("lake", "bundles", "reports"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.store.create()
        return self

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
