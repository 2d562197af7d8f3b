"""The source contract: a source ``read()``s new batches after a saved position and
``commit()``s a batch once it has landed in the lake (an acknowledgement, a watermark).

Positions are saved in the metadata database only after the batch commits, and every
batch has a deterministic id, so a crash at any point replays the batch, which the
ingester recognises and does not apply twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl


@dataclass
class Batch:
    """A frame read from a source, with the id that makes re-reading it harmless."""

    batch_id: str
    frame: pl.DataFrame
    source: str
    content_sha256: str
    position: dict[str, Any] = field(default_factory=dict)  # what commit() records once the batch landed


class Source(Protocol):
    """What every kind of source does."""

    name: str
    trust: str

    def read(self, state: dict[str, Any]) -> Iterator[Batch]:
        """New batches after the position in ``state`` (may block briefly for streams)."""
        ...

    def commit(self, batch: Batch, state: dict[str, Any]) -> dict[str, Any]:
        """Acknowledge a batch that landed; return the new state to save."""
        ...

    def close(self) -> None:
        ...


def digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


SourceFactory = Callable[[Any, Path], Source]
SOURCE_KINDS: dict[str, SourceFactory] = {}


def register_source(kind: str) -> Callable[[SourceFactory], SourceFactory]:
    """Register a source class for a spec ``kind``; the class is returned unchanged."""
    def deco(factory: SourceFactory) -> SourceFactory:
        SOURCE_KINDS[kind] = factory
        return factory
    return deco
