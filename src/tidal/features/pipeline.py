"""The feature pipeline: fitted once, stored as JSON, and run by the same code everywhere.

Training, batch scoring and online serving all call :meth:`FeaturePipeline.transform`
with a mapping of column name to a sequence of raw values (an Arrow column turned into a
list or array, or the values of a list of request records), so there is one definition
of every feature and no training/serving skew. NumPy only; no pandas on the hot path.
Arrow tables (training, batch scoring) take whole-column Arrow kernels that give the same
numbers (:mod:`tidal.features.columnar`), held to it by parity tests.
"""

from __future__ import annotations

import json
import math
import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

import numpy as np

from tidal.errors import DataValidationError
from tidal.spec import Spec

FORMAT_VERSION = 1
DATETIME_PARTS = ("hour", "dayofweek", "month")
MAX_CATEGORIES = 1000


def _to_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            return None
        return datetime.fromtimestamp(value.astype("datetime64[us]").astype(np.int64) / 1e6, tz=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def _datetime_parts(values: Sequence[Any]) -> np.ndarray:
    out = np.full((len(values), len(DATETIME_PARTS)), np.nan)
    for i, v in enumerate(values):
        d = _to_datetime(v)
        if d is not None:
            d = d.astimezone(timezone.utc)
            out[i] = (d.hour, d.weekday(), d.month)
    return out


def _category_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def record_values(records: Sequence[Mapping[str, Any]], names: list[str]) -> list[Sequence[Any]]:
    """The values of ``names`` in each record (None where one is missing), one sequence a record."""
    if len(names) > 1:
        get = operator.itemgetter(*names)  # a tuple a record, in C: when every record has every name
        try:
            return [get(r) for r in records]
        except (KeyError, TypeError):
            pass
    return [[r.get(name) for name in names] for r in records]


_SLAB = 8192  # rows copied at a time when assembling the matrix


def _assemble(blocks: list[np.ndarray], n_rows: int) -> np.ndarray:
    """Column blocks -> one C-ordered float64 matrix, filled in slabs of rows that stay in the CPU cache
    (several times faster than ``np.hstack`` for many columns; the same numbers)."""
    out = np.empty((n_rows, sum(b.shape[1] for b in blocks)))
    for start in range(0, n_rows, _SLAB):
        slab, j = out[start:start + _SLAB], 0
        for block in blocks:
            slab[:, j:j + block.shape[1]] = block[start:start + _SLAB]
            j += block.shape[1]
    return out


class FeaturePipeline:
    """Turns raw columns into the model's float matrix. Fit on training rows, then frozen."""

    def __init__(self, *, features: Mapping[str, str], vocabularies: Mapping[str, list[str]] | None = None) -> None:
        self.features = dict(features)  # name -> type
        self.vocabularies = {k: list(v) for k, v in (vocabularies or {}).items()}
        self._codes = {k: {c: i for i, c in enumerate(v)} for k, v in self.vocabularies.items()}
        # the online path's plan: numbers (numeric, boolean) go in one conversion, the rest column by column
        self._numbers = [n for n, k in self.features.items() if k in ("numeric", "boolean")]
        self._others: list[tuple[str, str, int]] = []  # (name, kind, first output column)
        number_columns, j = [], 0
        for name, kind in self.features.items():
            if kind in ("numeric", "boolean"):
                number_columns.append(j)
            else:
                self._others.append((name, kind, j))
            j += len(DATETIME_PARTS) if kind == "datetime" else 1
        self._number_columns = np.array(number_columns, dtype=np.intp)
        self._width = j

    @classmethod
    def from_spec(cls, spec: Spec) -> "FeaturePipeline":
        """The spec's model inputs: its features, then each lookup's features."""
        return cls(features={name: f.type for name, f in spec.model_features.items()})

    # fitting ---------------------------------------------------------------------------
    def fit(self, columns: Mapping[str, Sequence[Any]]) -> "FeaturePipeline":
        """Learn the category vocabularies (most frequent first) from training columns."""
        vocab = {}
        for name, kind in self.features.items():
            if kind == "categorical":
                counts = Counter(t for t in map(_category_text, columns[name]) if t is not None)
                vocab[name] = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:MAX_CATEGORIES]
        return FeaturePipeline(features=self.features, vocabularies=vocab)

    @property
    def output_names(self) -> list[str]:
        names = []
        for name, kind in self.features.items():
            if kind == "datetime":
                names += [f"{name}__{part}" for part in DATETIME_PARTS]
            else:
                names.append(name)
        return names

    @property
    def categorical_indices(self) -> list[int]:
        out, i = [], 0
        for kind in self.features.values():
            if kind == "categorical":
                out.append(i)
            i += len(DATETIME_PARTS) if kind == "datetime" else 1
        return out

    # transforming ----------------------------------------------------------------------
    def transform(self, columns: Mapping[str, Sequence[Any]], n_rows: int | None = None) -> np.ndarray:
        """Raw columns -> float64 matrix (rows x output_names). Missing columns are all-null."""
        if n_rows is None:
            n_rows = len(next(iter(columns.values()))) if columns else 0
        blocks = []
        for name, kind in self.features.items():
            values = columns.get(name)
            if values is None:
                values = [None] * n_rows
            blocks.append(self._block(name, kind, values, n_rows))
        return np.hstack(blocks) if blocks else np.empty((n_rows, 0))

    def _block(self, name: str, kind: str, values: Sequence[Any], n_rows: int) -> np.ndarray:
        """The per-value rules: one raw column -> its block of the matrix (rows x 1, or x 3 for a datetime)."""
        if kind in ("numeric", "boolean"):
            try:
                col = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                raise DataValidationError(f"feature {name!r} has a value that is not a number") from None
            return col.reshape(-1, 1)
        if kind == "categorical":
            codes = self._codes.get(name, {})
            unknown = float(len(codes))
            col = np.fromiter(
                (np.nan if t is None else codes.get(t, unknown) for t in map(_category_text, values)),
                dtype=np.float64, count=n_rows)
            return col.reshape(-1, 1)
        return _datetime_parts(values)

    def transform_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The online path: a list of request records into a preallocated matrix, without pandas.

        The number features of every record go through one NumPy conversion (the same
        per-value conversion as :meth:`transform`'s, so the same numbers); the others take
        :meth:`transform`'s per-column rules. A value that is not a number is reported by
        :meth:`transform`, naming its feature.
        """
        n_rows, names = len(records), self._numbers
        try:
            numbers = np.array(record_values(records, names), dtype=np.float64)
        except (TypeError, ValueError):
            numbers = None
        if numbers is None or numbers.shape != (n_rows, len(names)):  # let transform() name the bad feature
            return self.transform({name: [r.get(name) for r in records] for name in self.features}, n_rows=n_rows)
        if not self._others:
            return numbers
        X = np.empty((n_rows, self._width))
        X[:, self._number_columns] = numbers
        for name, kind, j in self._others:
            block = self._block(name, kind, [r.get(name) for r in records], n_rows)
            X[:, j:j + block.shape[1]] = block
        return X

    def transform_arrow(self, table: Any) -> np.ndarray:
        """The offline path: an Arrow table to the same matrix as :meth:`transform`.

        Whole columns go through Arrow kernels where their type allows
        (:mod:`tidal.features.columnar`); any other column is handed to :meth:`transform`'s
        per-value rules. The parity tests hold both paths to identical numbers.
        """
        from tidal.features import columnar

        n_rows = table.num_rows
        blocks: list[np.ndarray] = []
        for name, kind in self.features.items():
            col = table.column(name) if name in table.column_names else None
            block = None
            if col is None:
                block = np.full((n_rows, len(DATETIME_PARTS) if kind == "datetime" else 1), np.nan)
            elif kind in ("numeric", "boolean"):
                values = columnar.numbers(col)
                block = None if values is None else values.reshape(-1, 1)
            elif kind == "categorical":
                values = columnar.codes(col, self.vocabularies.get(name, []))
                block = None if values is None else values.reshape(-1, 1)
            else:
                block = columnar.datetime_parts(col, DATETIME_PARTS)
            if block is None:  # a type the kernels do not handle: the per-value rules
                values = col.to_numpy(zero_copy_only=False) if kind in ("numeric", "boolean") else col.to_pylist()
                block = self._block(name, kind, values, n_rows)
            blocks.append(block)
        return _assemble(blocks, n_rows)

    # storage ---------------------------------------------------------------------------
    def to_json(self) -> str:
        # features as an ordered list: the column order of the model's matrix
        return json.dumps({"format_version": FORMAT_VERSION, "features": [[n, k] for n, k in self.features.items()],
                           "vocabularies": self.vocabularies, "output_names": self.output_names,
                           "categorical_indices": self.categorical_indices}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeaturePipeline":
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise DataValidationError(f"unsupported pipeline format {data.get('format_version')!r}")
        return cls(features={n: k for n, k in data["features"]}, vocabularies=data["vocabularies"])
