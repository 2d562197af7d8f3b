"""A large request's records held column-wise, as the request decoder reads them.

Scoring 1,000 records one dict at a time costs more than the model does: the decoder would
build a dict per record, the pipeline would read each back by name, and the prediction log
would take a tuple per row. :class:`RecordColumns` keeps the values as one sequence per field
instead: the pipeline takes the columns as they are (:meth:`FeaturePipeline.transform`, the
same per-value rules as the records path) and so does the log (one chunk per request).
It is still a sequence of records (each one a dict, built on demand) for code that needs them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tidal.features.pipeline import record_values


class RecordColumns(Sequence[dict[str, Any]]):
    """``n`` records as ``columns``: field name -> a sequence of ``n`` values (None where missing)."""

    __slots__ = ("columns", "n")

    def __init__(self, columns: Mapping[str, Sequence[Any]], n: int) -> None:
        self.columns = dict(columns)
        self.n = n

    @classmethod
    def from_rows(cls, names: Sequence[str], rows: Sequence[Sequence[Any]]) -> "RecordColumns":
        """Rows of values in ``names``' order, transposed (in C: one ``zip``)."""
        if not rows:
            return cls({name: () for name in names}, 0)
        return cls(dict(zip(names, zip(*rows))), len(rows))

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], names: list[str]) -> "RecordColumns":
        """The fields ``names`` of ``records`` (None where a record lacks one)."""
        if isinstance(records, RecordColumns):
            return cls({name: records.column(name) for name in names}, len(records))
        return cls.from_rows(names, record_values(records, names))

    def column(self, name: str) -> Sequence[Any]:
        """The values of ``name``, all None for a field the records do not have."""
        values = self.columns.get(name)
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
