"""Deployment, part one: model bundles (verified on load, never pickles) and the versioned registry."""

from tidal.registry.bundle import Bundle, load_bundle, write_bundle
from tidal.registry.registry import STAGES, Registry

__all__ = ["STAGES", "Bundle", "Registry", "load_bundle", "write_bundle"]
