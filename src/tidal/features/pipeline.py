"""The feature pipeline: fitted once, stored as JSON, and run by the same code everywhere.

Training, batch scoring and online serving all call :meth:`FeaturePipeline.transform`
with a mapping of column name to a sequence of raw values (an Arrow column turned into a
list or array, or the values of a list of request records), so there is one definition
of every feature and no training/serving skew. NumPy only; no pandas on the hot path.
Arrow tables (training, batch scoring) take whole-column Arrow kernels that give the same
numbers (:mod:`tidal.features.columnar`), held to it by parity tests.

The matrix's columns are the model features (the spec's, then each lookup's), then the
derived features (:mod:`tidal.features.derived`), which every path computes from the same
arrays: the numeric columns already built and the categorical values' text.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

import numpy as np

from tidal.errors import DataValidationError, StateError
from tidal.features import derived as D
from tidal.spec import Spec

FORMAT_VERSION = 2  # 2: derived features and plugins; format 1 (no derived features) still loads
READABLE_FORMATS = (1, 2)
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


def category_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _texts(values: Sequence[Any]) -> np.ndarray:
    """Category text of each value (None for missing), as the per-value rule spells it."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(map(category_text, values))
    return out


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

    def __init__(self, *, features: Mapping[str, str], vocabularies: Mapping[str, list[str]] | None = None,
                 derived: Mapping[str, D.Derived] | None = None, plugins: Sequence[str] = ()) -> None:
        self.features = dict(features)  # name -> type: the raw input columns
        self.vocabularies = {k: list(v) for k, v in (vocabularies or {}).items()}
        self.derived = dict(derived or {})  # name -> transform: output columns after the features'
        self.plugins = list(plugins)  # modules whose import registers the python transforms
        self._codes = {k: {c: i for i, c in enumerate(v)} for k, v in self.vocabularies.items()}
        # the online path's plan: numbers (numeric, boolean) go in one conversion, the rest column by column
        self._numbers = [n for n, k in self.features.items() if k in ("numeric", "boolean")]
        self._others: list[tuple[str, str, int]] = []  # (name, kind, first output column)
        number_columns, j = [], 0
        self._positions: dict[str, int] = {}  # feature -> its (first) output column
        for name, kind in self.features.items():
            self._positions[name] = j
            if kind in ("numeric", "boolean"):
                number_columns.append(j)
            else:
                self._others.append((name, kind, j))
            j += len(DATETIME_PARTS) if kind == "datetime" else 1
        self._number_columns = np.array(number_columns, dtype=np.intp)
        self._width = j
        # each numeric feature's column in the matrix: its values as given (NaN where missing); the
        # server logs a large request's numbers from there (read on every request: built once)
        self.numeric_positions = {name: self._positions[name] for name, kind in self.features.items()
                                  if kind == "numeric"}

    @classmethod
    def from_spec(cls, spec: Spec) -> "FeaturePipeline":
        """The spec's model inputs (its features, then each lookup's features), then its derived features.

        The spec's ``plugins`` are imported first, so that its python transforms are registered.
        """
        D.import_plugins(spec.plugins)
        return cls(features={name: f.type for name, f in spec.model_features.items()},
                   derived={name: D.from_definition(name, d, spec.plugins) for name, d in spec.derived.items()},
                   plugins=spec.plugins)

    # fitting ---------------------------------------------------------------------------
    def fit(self, columns: Mapping[str, Sequence[Any]], target: Sequence[float] | None = None) -> "FeaturePipeline":
        """Learn the category vocabularies (most frequent first) and the target encodings from training columns
        (only the categorical ones are read); ``target`` (the positive-class indicator, or the value) is needed
        when there is a target encoding."""
        vocab = {}
        for name, kind in self.features.items():
            if kind == "categorical":
                counts = Counter(t for t in map(category_text, columns[name]) if t is not None)
                vocab[name] = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:MAX_CATEGORIES]
        derived = dict(self.derived)
        for name, t in self.derived.items():
            if isinstance(t, D.TargetEncoding):
                if target is None:
                    raise StateError(f"derived feature {name!r} is a target encoding: fitting it needs the target",
                                     fix="pass target= to FeaturePipeline.fit")
                derived[name] = t.fit(_texts(columns[t.column]), np.asarray(target, dtype=np.float64))
        return FeaturePipeline(features=self.features, vocabularies=vocab, derived=derived, plugins=self.plugins)

    def out_of_fold(self, columns: Mapping[str, Sequence[Any]], target: Sequence[float], *,
                    seed: int) -> dict[int, np.ndarray]:
        """The training rows' out-of-fold target encodings, by output column: the values the training matrix
        takes instead of :meth:`transform`'s (which encodes every row with the fit on all training rows)."""
        out = {}
        for j, (name, t) in enumerate(self.derived.items(), start=self._width):
            if isinstance(t, D.TargetEncoding):
                out[j] = t.out_of_fold(_texts(columns[t.column]), np.asarray(target, dtype=np.float64), seed=seed)
        return out

    @property
    def output_names(self) -> list[str]:
        names = []
        for name, kind in self.features.items():
            if kind == "datetime":
                names += [f"{name}__{part}" for part in DATETIME_PARTS]
            else:
                names.append(name)
        return names + list(self.derived)

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
        if self.derived:
            index = {name: i for i, name in enumerate(self.features)}

            def texts(name: str) -> np.ndarray:
                values = columns.get(name)
                return _texts([None] * n_rows if values is None else values)

            blocks += [c.reshape(-1, 1) for c in self._derived_columns(lambda n: blocks[index[n]][:, 0], texts)]
        return np.hstack(blocks) if blocks else np.empty((n_rows, 0))

    def _derived_columns(self, number: Callable[[str], np.ndarray], texts: Callable[[str], np.ndarray],
                         codes: Callable[[str, Sequence[str]], np.ndarray | None] | None = None) -> list[np.ndarray]:
        """The derived features' columns, from the numeric columns already built (``number``) and the
        categorical values' text (``texts``); ``codes`` (Arrow) may give a target encoding's codes instead."""
        out, seen = [], {}
        for t in self.derived.values():
            if isinstance(t, D.TargetEncoding) and codes is not None:
                c = codes(t.column, t.categories)
                if c is not None:
                    out.append(t.from_codes(c))
                    continue
            args = []
            for col in t.inputs:
                if self.features[col] == "categorical":
                    if col not in seen:
                        seen[col] = texts(col)
                    args.append(seen[col].copy())
                else:  # a contiguous copy: a transform may not touch the model's own columns
                    args.append(np.array(number(col), dtype=np.float64))
            out.append(t.compute(*args))
        return out

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
                (np.nan if t is None else codes.get(t, unknown) for t in map(category_text, values)),
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
        if not self._others and not self.derived:
            return numbers
        X = np.empty((n_rows, self._width + len(self.derived)))
        X[:, self._number_columns] = numbers
        for name, kind, j in self._others:
            block = self._block(name, kind, [r.get(name) for r in records], n_rows)
            X[:, j:j + block.shape[1]] = block
        if self.derived:
            columns = self._derived_columns(lambda n: X[:, self._positions[n]],
                                            lambda n: _texts([r.get(n) for r in records]))
            for j, col in enumerate(columns, start=self._width):
                X[:, j] = col
        return X

    def transform_rows(self, names: Sequence[str], rows: Sequence[Sequence[Any]],
                       columns: Callable[[], Mapping[str, Sequence[Any]]]) -> np.ndarray:
        """A large request's records, as rows of values in ``names``' order, into :meth:`transform`'s matrix.

        When the rows hold exactly the number features, in the model's order (a numeric model's
        request), they are read in one pass (``np.fromiter``: the same per-value conversion as
        :meth:`transform`'s, with no column built first). Otherwise each feature's values come
        from ``columns()`` (the rows transposed) through :meth:`transform`'s rules.
        """
        n_rows = len(rows)
        if list(names) == self._numbers and not self._others and not self.derived and self._numbers:
            try:
                return np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64,
                                   count=n_rows * len(names)).reshape(n_rows, len(names))
            except (TypeError, ValueError):  # a value that is not a number: transform() names its feature
                pass
        return self.transform(columns(), n_rows=n_rows)

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
        if self.derived:
            index = {name: i for i, name in enumerate(self.features)}
            present = set(table.column_names)

            def texts(name: str) -> np.ndarray:
                return _texts(table.column(name).to_pylist() if name in present else [None] * n_rows)

            def codes(name: str, categories: Sequence[str]) -> np.ndarray | None:
                return columnar.codes(table.column(name), categories) if name in present else np.full(n_rows, np.nan)

            blocks += [c.reshape(-1, 1) for c in self._derived_columns(lambda n: blocks[index[n]][:, 0], texts, codes)]
        return _assemble(blocks, n_rows)

    # storage ---------------------------------------------------------------------------
    def to_json(self) -> str:
        # features and derived features as ordered lists: the column order of the model's matrix
        return json.dumps({"format_version": FORMAT_VERSION, "features": [[n, k] for n, k in self.features.items()],
                           "vocabularies": self.vocabularies, "output_names": self.output_names,
                           "categorical_indices": self.categorical_indices,
                           "derived": [[n, t.state()] for n, t in self.derived.items()], "plugins": self.plugins},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeaturePipeline":
        """A stored pipeline. Python transforms are looked up after importing its plugins, and refused
        (:class:`~tidal.errors.StateError`) when missing or when their source no longer hashes as stored."""
        data = json.loads(text)
        if data.get("format_version") not in READABLE_FORMATS:
            raise DataValidationError(f"unsupported pipeline format {data.get('format_version')!r}",
                                      fix="load it with the tidal version that wrote it")
        plugins = data.get("plugins", [])
        states = data.get("derived", [])
        if any(state["kind"] == "python" for _, state in states):
            D.import_plugins(plugins)
        return cls(features={n: k for n, k in data["features"]}, vocabularies=data["vocabularies"],
                   derived={n: D.from_state(n, state, plugins) for n, state in states}, plugins=plugins)
