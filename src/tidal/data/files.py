"""Reading CSV and Parquet files into frames, and hashing them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from tidal.errors import DataValidationError

SUFFIXES = (".csv", ".parquet", ".pq")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise DataValidationError(f"file not found: {path}", fix="check the path") from None
    return h.hexdigest()


def read_file(path: Path) -> pl.DataFrame:
    """Read a CSV (every column as text, typed later by the spec) or a Parquet file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pl.read_csv(path, infer_schema=False)
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise DataValidationError(f"cannot read {path}: {exc}", fix="check that the file is valid CSV or Parquet") from None
    raise DataValidationError(f"unsupported file type {suffix!r} for {path}",
                              fix=f"use one of: {', '.join(SUFFIXES)}")
