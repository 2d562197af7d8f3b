"""Data: read batches from sources, validate them against the spec, accept or quarantine rows."""

from tidal.data.ingest import IngestReport, ingest_file, ingest_frame
from tidal.data.files import read_file
from tidal.data.lookups import ingest_lookup_file, ingest_lookup_frame
from tidal.data.validate import ValidationResult, validate_batch

__all__ = ["IngestReport", "ValidationResult", "ingest_file", "ingest_frame", "ingest_lookup_file",
           "ingest_lookup_frame", "read_file", "validate_batch"]
