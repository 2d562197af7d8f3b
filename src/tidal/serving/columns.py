"""A large request's records held column-wise, as the request decoder reads them.

Scoring 1,000 records one dict at a time costs more than the model does: the decoder would
build a dict per record, the pipeline would read each back by name, and the prediction log
would take a tuple per row. :class:`RecordColumns` keeps the values as one sequence per field
instead: the pipeline takes the columns as they are (:meth:`FeaturePipeline.transform`, the
same per-value rules as the records path) and so does the log (one chunk per request).
It is still a sequence of records (each one a dict, built on demand) for code that needs them.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tidal.features.pipeline import record_values

# requests of this many records or more are decoded, featurised and logged column-wise (every protocol)
COLUMNS_FROM = 32


class RecordColumns(Sequence[dict[str, Any]]):
    """``n`` records as ``columns``: field name -> a sequence of ``n`` values (None where missing).

    The request decoder builds it from ``rows`` (each record's values in ``names``' order) and
    transposes them only as far as asked: a column by :meth:`column`, all of them by
    :attr:`columns`; the model's number features are read from the rows directly
    (:meth:`FeaturePipeline.transform_rows`).
    """

    __slots__ = ("_columns", "n", "names", "rows")

    def __init__(self, columns: Mapping[str, Sequence[Any]] | None, n: int, *, names: Sequence[str] = (),
                 rows: Sequence[Sequence[Any]] | None = None) -> None:
        self._columns: dict[str, Sequence[Any]] = {} if columns is None else dict(columns)
        self.n = n
        self.names = list(names) if rows is not None else list(self._columns)
        self.rows = rows  # None once a column was replaced (the rows would no longer say the same)

    @classmethod
    def from_rows(cls, names: Sequence[str], rows: Sequence[Sequence[Any]]) -> "RecordColumns":
        """Rows of values in ``names``' order (transposed into columns when asked)."""
        return cls(None, len(rows), names=names, rows=rows)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], names: list[str]) -> "RecordColumns":
        """The fields ``names`` of ``records`` (None where a record lacks one)."""
        if isinstance(records, RecordColumns):
            return cls({name: records.column(name) for name in names}, len(records))
        return cls(dict(zip(names, zip(*record_values(records, names)))) if records else
                   {name: () for name in names}, len(records))

    @property
    def columns(self) -> dict[str, Sequence[Any]]:
        """Every field's values (the rows transposed, in C, the first time)."""
        if self.rows is not None and len(self._columns) < len(self.names):
            self._columns = dict(zip(self.names, zip(*self.rows))) if self.rows else {n: () for n in self.names}
        return self._columns

    def replace(self, name: str, values: Sequence[Any]) -> None:
        """Replace the values of field ``name`` (e.g. text parsed into datetimes)."""
        self.columns[name] = values
        self.rows = None

    def column(self, name: str) -> Sequence[Any]:
        """The values of ``name``, all None for a field the records do not have."""
        values = self._columns.get(name)
        if values is None and self.rows is not None and name in self.names:
            values = self._columns[name] = tuple(map(operator.itemgetter(self.names.index(name)), self.rows))
        return (None,) * self.n if values is None else values

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {name: values[i] for name, values in self.columns.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = list(self.columns)
        return (dict(zip(names, row)) for row in zip(*self.columns.values()))
