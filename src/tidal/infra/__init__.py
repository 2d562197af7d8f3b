"""The ground floor: storage (metadata database, Delta lake, workspace). Imports no layer."""

from tidal.infra.lake import Lake
from tidal.infra.metadata import MetadataStore
from tidal.infra.workspace import Workspace

__all__ = ["Lake", "MetadataStore", "Workspace"]
