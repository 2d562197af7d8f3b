"""Batch scoring: a CSV, Parquet or Delta input scored chunk by chunk through the online predictor's code.

Each chunk is typed by ingestion's rules (:func:`tidal.data.validate.type_columns`), joined to
the spec's lookups and history features as of its event times (history: each entity's events
in the lake strictly before the row, as in training), turned into the model's matrix by the bundle's
:class:`~tidal.features.FeaturePipeline` and scored; the decision rule is the online
predictor's (:class:`~tidal.serving.decision.DecisionRule`). The output holds the input's
entity key (if any), ``prediction``, ``probability``, ``decision`` and ``model_version``, one
row per input row, in input order.

A value that cannot be typed (``"abc"`` in a numeric column) is scored as missing, the way
the model meets any null, and counted per column in the report; ``strict=True`` refuses
the run instead. Memory is bounded by ``chunk_rows``; the output appears only when the run
succeeds. The model runs natively in LightGBM, or compiled by lleaves when it is installed
and agrees with LightGBM (:mod:`tidal.serving.compiled`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tidal.errors import DataValidationError, Problem, StateError, TidalError
from tidal.registry.bundle import Bundle
from tidal.serving import compiled
from tidal.serving.batch_io import AtomicWriter, BatchInput, open_input, output_format, prefetch
from tidal.serving.decision import DecisionRule
from tidal.spec import Spec

ENGINES = ("auto", "native", "compiled")
COMPILE_MIN_ROWS = 1_000_000  # auto compiles for inputs at least this long (compiling costs ~1-2 s)
COMPILE_MIN_BYTES = 32 << 20  # ... or, when the row count is unknown (CSV), at least this large
INLINE_MIN_ROWS = 10_000_000  # ... and lets LLVM inline the trees (slower to compile, faster to run) from here
PREFETCH_CHUNKS = 3  # chunks read and featurised ahead of the model (e.g. while it compiles): bounds memory
Progress = Callable[[int, "int | None"], None]


@dataclass
class ScoreReport:
    """What a batch run did."""

    input: str
    output: str
    model_version: int
    rows: int
    seconds: float
    engines: dict[str, int] = field(default_factory=dict)  # rows scored by each model engine
    compiled_parity: float | None = None  # max |compiled - native| on the check rows, when compiled
    compile_seconds: float | None = None  # time to compile the model, when compiled (overlaps reading)
    invalid_values: dict[str, int] = field(default_factory=dict)  # present but not of the column's type
    missing_required: dict[str, int] = field(default_factory=dict)  # nulls in inputs declared not nullable
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "model_version": self.model_version, "rows": self.rows,
                "seconds": self.seconds, "rows_per_second": self.rows_per_second, "engines": self.engines,
                "compiled_parity": self.compiled_parity, "compile_seconds": self.compile_seconds,
                "invalid_values": self.invalid_values,
                "missing_required": self.missing_required, "notes": self.notes}


class _Model:
    """The booster, or its compiled form once that is proven equal to it on the first chunk's rows.

    Compilation starts at once in a thread, so it overlaps with reading the first chunk; the
    first prediction waits for it. (Scoring natively meanwhile would not pay: on two cores
    LightGBM's threads and the compiler slow each other down several times over.)
    """

    def __init__(self, booster: Any, engine: str, *, large: bool, inline: bool = False) -> None:
        self.booster = booster
        self.inline = inline
        self.engine = engine
        self.compiled: Callable[[np.ndarray], np.ndarray] | None = None
        self.parity: float | None = None
        self.compile_seconds: float | None = None
        self.notes: list[str] = []
        self.large = large
        self._result: dict[str, Any] = {}
        self._ready = threading.Event()

    def start(self) -> None:
        """Start compiling in a thread when the engine calls for it (the first prediction waits)."""
        if self.engine == "compiled" and not compiled.available():
            raise StateError("the compiled engine needs lleaves, which is not installed",
                             fix="pip install 'tidal[fast]', or use --engine native")
        if self.engine == "compiled" or (self.engine == "auto" and self.large and compiled.available()):
            threading.Thread(target=self._compile, name="tidal-compile", daemon=True).start()
        else:
            self._ready.set()

    def _compile(self) -> None:
        started = time.perf_counter()
        try:
            self._result["predict"] = compiled.compile_booster(self.booster, inline=self.inline)
        except Exception as exc:  # noqa: BLE001 - a compiler failure leaves the native path
            self._result["error"] = f"{type(exc).__name__}: {exc}"
        self.compile_seconds = time.perf_counter() - started
        self._ready.set()

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, str]:
        self._ready.wait()
        if self._result:
            self._adopt(X)
        if self.compiled is not None:
            return self.compiled(X), "compiled"
        return self.booster.predict(X, num_threads=compiled.THREADS), "native"

    def _adopt(self, X: np.ndarray) -> None:
        result, self._result = self._result, {}
        if "error" in result:
            self._refuse(f"the model could not be compiled ({result['error']}); scored natively")
            return
        self.parity = compiled.parity(result["predict"], self.booster, X)
        if self.parity > compiled.PARITY_TOLERANCE:
            self._refuse(f"the compiled model differs from LightGBM by {self.parity:.3g} "
                         f"(over {compiled.PARITY_TOLERANCE:g}); scored natively")
            return
        self.compiled = result["predict"]

    def _refuse(self, note: str) -> None:
        if self.engine == "compiled":
            raise StateError(note.replace("; scored natively", ""), fix="use --engine native")
        self.notes.append(note)


def _inputs(spec: Spec, bundle: Bundle, source: BatchInput) -> tuple[dict[str, str], list[str]]:
    """(column -> kind to read and type, the model inputs that must not be null)."""
    joined = {f for lookup in spec.lookups.values() for f in lookup.features} | set(spec.history)
    declared = bundle.signature.get("inputs", {})
    kinds = {n: k for n, k in bundle.pipeline.features.items() if n not in joined}
    required = [n for n in kinds if not declared.get(n, {}).get("nullable", True)]
    missing = [n for n in required if n not in source.columns]
    if spec.lookups:
        missing += [c for c in [*spec.lookup_keys, spec.event_time] if c not in source.columns and c not in missing]
    if spec.history:
        missing += [c for c in [spec.entity_key, spec.event_time] if c not in source.columns and c not in missing]
    if missing:
        raise DataValidationError(
            f"{source.path}: {len(missing)} required column(s) missing",
            problems=[Problem(c, "column is missing from the input", "add the column (see the spec)") for c in missing])
    read = {n: k for n, k in kinds.items() if n in source.columns}
    if spec.lookups:
        read.update({k: "key" for k in spec.lookup_keys if k not in read})
    if spec.history:
        read.setdefault(spec.entity_key, "key")
    if spec.lookups or spec.history:
        read[spec.event_time] = "datetime"
    return read, required


def score_file(spec: Spec, bundle: Bundle, version: int, input: str | Path, output: str | Path, *,
               chunk_rows: int = 200_000, progress: Progress | None = None, engine: str = "auto",
               strict: bool = False, lake: Any = None) -> ScoreReport:
    """Score ``input`` with ``bundle`` (model ``version``) into ``output`` (``*.parquet`` or ``*.csv``).

    ``progress(rows_done, rows_total_or_None)`` is called after each chunk. ``engine`` is
    ``auto`` (compiled for large inputs when lleaves is installed and agrees with LightGBM),
    ``native`` or ``compiled``. ``lake`` is needed only when the spec has lookups or history features.
    """
    from tidal.data.validate import type_columns

    started = time.perf_counter()
    if chunk_rows < 1:
        raise DataValidationError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if engine not in ENGINES:
        raise DataValidationError(f"unknown engine {engine!r}", fix=f"use one of: {', '.join(ENGINES)}")
    output_format(output)
    source = open_input(input)
    if Path(str(input)).resolve() == Path(output).resolve():
        raise DataValidationError(f"the output {output} is the input", fix="write the predictions elsewhere")
    kinds, required = _inputs(spec, bundle, source)
    key = spec.entity_key if spec.entity_key and spec.entity_key in source.columns else None
    join = _lookup_join(spec, lake)
    rule = DecisionRule.from_signature(bundle.signature)
    large = (source.total_rows or 0) >= COMPILE_MIN_ROWS or (
        source.total_rows is None and (source.size_bytes or 0) >= COMPILE_MIN_BYTES)
    model = _Model(bundle.booster, engine, large=large, inline=(source.total_rows or 0) >= INLINE_MIN_ROWS)
    model.start()
    columns = list(dict.fromkeys([*kinds, *([key] if key else [])]))
    writer = AtomicWriter(output)
    report = ScoreReport(input=str(input), output=str(output), model_version=version, rows=0, seconds=0.0)
    invalid: Counter[str] = Counter()
    nulls: Counter[str] = Counter()
    engines: Counter[str] = Counter()

    def features() -> Any:
        """(keys, feature matrix, untypable counts, null counts) per chunk: run ahead in a thread."""
        for raw in _reading(source, columns, chunk_rows):
            typed, bad = type_columns(raw.select(list(kinds)), kinds)
            missing = {c: n for c in required if (n := typed[c].null_count())}
            X = bundle.pipeline.transform_arrow(join(typed.to_arrow()))
            yield (raw[key].to_arrow() if key else None), X, bad, missing

    try:
        for keys, X, bad, missing in prefetch(features(), depth=PREFETCH_CHUNKS):
            invalid.update(bad)
            nulls.update(missing)
            if strict and (bad or missing):
                raise _strict_error(invalid, nulls)
            scores, used = model.predict(X)
            engines[used] += len(scores)
            writer.write(_output_table(rule, scores, version, key, keys))
            report.rows += len(scores)
            if progress is not None:
                progress(report.rows, source.total_rows)
        writer.commit(_output_table(rule, np.empty(0), version, key, pa.array([], pa.large_string())))
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - started
    report.engines, report.compiled_parity, report.notes = dict(engines), model.parity, model.notes
    report.compile_seconds = model.compile_seconds
    report.invalid_values, report.missing_required = dict(invalid), dict(nulls)
    return report


def typed_rows(spec: Spec, bundle: Bundle, input: str | Path, rows: int, *, lake: Any = None) -> pa.Table:
    """The first ``rows`` rows of ``input``, typed and joined as batch scoring does (e.g. for a parity check)."""
    from tidal.data.validate import type_columns

    source = open_input(input)
    kinds, _ = _inputs(spec, bundle, source)
    try:
        frame = source.head(list(kinds), rows)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a problem with the input
        raise DataValidationError(f"cannot read {source.path}: {type(exc).__name__}: {exc}") from None
    typed, _ = type_columns(frame, kinds)
    return _lookup_join(spec, lake)(typed.to_arrow())


def _reading(source: BatchInput, columns: list[str], chunk_rows: int) -> Any:
    """The input's frames; a reader failure mid-way becomes a clear error."""
    frames = source.frames(columns, chunk_rows)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except TidalError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed CSV, corrupt Parquet, unreadable Delta file
            raise DataValidationError(f"cannot read {source.path}: {type(exc).__name__}: {exc}",
                                      fix="check that the input is valid CSV, Parquet or Delta") from None
        yield frame


def _lookup_join(spec: Spec, lake: Any) -> Callable[[pa.Table], pa.Table]:
    """Each chunk's lookup and history features, joined as of its event times, from lookup and events
    versions pinned for the run (the events are read once: history of each entity's events before each row)."""
    if not spec.lookups and not spec.history:
        return lambda table: table
    if lake is None:
        raise StateError("the spec has lookups or history features, so batch scoring needs the workspace's lake",
                         fix="score through Project.score or `tidal score`")
    from tidal.features.history import feature_rows, join_feature_rows, read_events
    from tidal.features.lookups import join_lookups
    from tidal.infra.lake import lookup_table

    versions = {name: lake.version(lookup_table(name)) for name in spec.lookups}
    if not spec.history:
        return lambda table: join_lookups(table, spec, lake, versions)
    rows = feature_rows(read_events(lake, spec), spec)
    return lambda table: join_feature_rows(join_lookups(table, spec, lake, versions), spec, rows)


def _output_table(rule: DecisionRule, scores: np.ndarray, version: int, key: str | None, keys: Any) -> pa.Table:
    """One chunk of the output: the entity key (if any), prediction, probability, decision, model_version."""
    columns = {} if key is None else {key: keys}
    columns.update(rule.arrow(scores))
    columns["model_version"] = pa.array(np.full(len(scores), version, dtype=np.int64))
    return pa.table(columns)


def _strict_error(invalid: Counter[str], nulls: Counter[str]) -> DataValidationError:
    problems = [Problem(c, f"{n} value(s) are not of the column's type") for c, n in invalid.items()]
    problems += [Problem(c, f"{n} missing value(s) in an input that is not nullable") for c, n in nulls.items()]
    return DataValidationError("the input has values the model cannot read (strict mode)", problems=problems,
                               fix="fix the input, or score without --strict (such values are scored as missing)")
