"""Sources of batches: files, folders, SQL queries, HTTP push, Redis Streams.

Each kind implements :class:`Source` and registers itself under its spec ``kind``;
:func:`open_source` builds one from the spec's configuration.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tidal.data.sources.base import SOURCE_KINDS, Batch, Source, digest, register_source
from tidal.errors import SpecError

# kinds whose modules import optional drivers are loaded on first use
_MODULES = {"file": "files", "folder": "files", "sql": "sql", "redis_stream": "redis_stream"}


def open_source(config: Any, base: Path) -> Source:
    """The source for one entry of the spec's ``sources`` (paths relative to ``base``)."""
    module = _MODULES.get(config.kind)
    if module is None:
        raise SpecError(f"source kind {config.kind!r} cannot be read by the ingester",
                        fix="http sources receive batches on the server's POST /v1/ingest")
    importlib.import_module(f"tidal.data.sources.{module}")
    return SOURCE_KINDS[config.kind](config, base)


__all__ = ["SOURCE_KINDS", "Batch", "Source", "digest", "open_source", "register_source"]
