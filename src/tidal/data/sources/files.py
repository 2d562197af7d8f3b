"""File sources: one CSV or Parquet file, or a folder watched for new files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tidal.data.files import file_digest, read_file
from tidal.data.sources.base import Batch, register_source


def _resolve(path: str, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


@register_source("file")
class FileSource:
    """One file. It is offered on every pass; a content seen before is a no-op batch (reported as such)."""

    def __init__(self, config: Any, base: Path) -> None:
        self.path = _resolve(config.path, base)
        self.name = config.name or f"file:{self.path.name}"
        self.trust = config.trust

    def read(self, state: dict[str, Any]) -> Iterator[Batch]:
        sha = file_digest(self.path)
        yield Batch(batch_id=f"b-{sha[:16]}", frame=read_file(self.path), source=str(self.path),
                    content_sha256=sha, position={"sha": sha})

    def commit(self, batch: Batch, state: dict[str, Any]) -> dict[str, Any]:
        return {"done": [*state.get("done", [])[-99:], batch.position["sha"]]}

    def close(self) -> None:
        pass


@register_source("folder")
class FolderSource:
    """Every new file in a folder matching the pattern, oldest name first.

    Writers should write to a hidden or ``.tmp``/``.part`` name and rename when done;
    such names are never read.
    """

    def __init__(self, config: Any, base: Path) -> None:
        self.path = _resolve(config.path, base)
        self.pattern = config.pattern
        self.name = config.name or f"folder:{self.path.name}"
        self.trust = config.trust

    def read(self, state: dict[str, Any]) -> Iterator[Batch]:
        done = set(state.get("files", {}))
        if not self.path.is_dir():
            return
        for p in sorted(self.path.glob(self.pattern)):
            if p.name in done or p.name.startswith(".") or p.suffix in (".tmp", ".part") or not p.is_file():
                continue
            sha = file_digest(p)
            yield Batch(batch_id=f"b-{sha[:16]}", frame=read_file(p), source=str(p), content_sha256=sha,
                        position={"file": p.name, "sha": sha})

    def commit(self, batch: Batch, state: dict[str, Any]) -> dict[str, Any]:
        files = dict(state.get("files", {}))
        files[batch.position["file"]] = batch.position["sha"]
        return {"files": files}

    def close(self) -> None:
        pass
