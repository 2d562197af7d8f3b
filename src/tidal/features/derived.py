"""Derived features: columns the fitted pipeline computes from the declared features.

Each transform reads its inputs as NumPy arrays, whole columns at a time: a numeric or
boolean input as the float64 column the pipeline already built for it (NaN for missing),
a categorical input as its values' text (``None`` for missing, the pipeline's own spelling
of categories). Every path of the pipeline (per column, request records, Arrow tables)
hands them the same arrays, so a derived feature has one value whichever path computes it.

- ``log``: log1p(x) for x > -1, else missing;
- ``clip``: x limited to [min, max]; missing stays missing;
- ``bucketize``: the number of bounds at or below x (``searchsorted`` right); missing stays missing;
- ``ratio``: numerator / denominator; missing when either is missing, the denominator is 0 or the
  quotient overflows;
- ``target_encoding``: a category's smoothed target mean, fitted on the training rows
  (:meth:`TargetEncoding.out_of_fold` gives the training rows' out-of-fold values);
- ``python``: a function registered with :func:`register_transform`, identified in the
  bundle by its name and the sha256 of its source; an infinite result is missing.

Transforms are plain objects (configuration in, no work in the constructor) with one verb
set: ``fit`` (target encoding learns; the others return themselves), ``compute`` and
``state`` (their JSON form), rebuilt by :func:`from_state`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tidal.errors import DataValidationError, SpecError, StateError

MAX_ENCODED = 100_000  # categories a target encoding keeps (most frequent first); the rest get the prior


# registered Python transforms -----------------------------------------------------------
@dataclass(frozen=True)
class Registered:
    name: str
    function: Callable[..., Any]
    sha256: str

    @property
    def where(self) -> str:
        return f"{self.function.__module__}.{self.function.__qualname__}"


_REGISTRY: dict[str, Registered] = {}  # name -> function: what @register_transform filled in this process


def source_sha256(function: Callable[..., Any]) -> str:
    """sha256 of the function's source text (what the bundle records and checks on load)."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def register_transform(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a vectorised feature function under ``name``, for ``derived: {kind: python, function: NAME}``.

    The function takes one NumPy array per input and the spec's ``params`` as keyword
    arguments, and returns one float per row. It is returned unchanged. Its source must be
    readable (defined in a file, not typed into a console), since the bundle records its
    sha256. Registering another function under a taken name is refused; redefining the same
    function (a reloaded module) replaces it.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("register_transform takes the transform's name: @register_transform('my_feature')")

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        try:
            digest = source_sha256(function)
        except (OSError, TypeError):
            raise StateError(f"the source of transform {name!r} cannot be read",
                             fix="define the function with `def` in a Python module file, so its source "
                                 "can be hashed into the bundle") from None
        entry = Registered(name, function, digest)
        old = _REGISTRY.get(name)
        if old is not None and old.where != entry.where:
            raise StateError(f"transform name {name!r} is already registered by {old.where}",
                             fix=f"register {entry.where} under another name")
        _REGISTRY[name] = entry
        return function

    return register


def registered(name: str) -> Registered | None:
    return _REGISTRY.get(name)


def import_plugins(modules: Sequence[str]) -> None:
    """Import the spec's ``plugins`` so their ``@register_transform`` calls run."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise StateError(f"plugin module {module!r} cannot be imported: {exc}",
                             fix="install it or put its folder on PYTHONPATH where tidal runs "
                                 "(training, serving and scoring alike)") from None


# the transforms ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Log:
    column: str
    kind: str = "log"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.column,)

    def compute(self, x: np.ndarray) -> np.ndarray:
        out = np.full(len(x), np.nan)
        ok = x > -1  # NaN compares False
        out[ok] = np.log1p(x[ok])
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "column": self.column}


@dataclass(frozen=True)
class Clip:
    column: str
    min: float | None = None
    max: float | None = None
    kind: str = "clip"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.column,)

    def compute(self, x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype=np.float64)
        if self.min is not None:
            out = np.where(out < self.min, self.min, out)  # NaN compares False: stays NaN
        if self.max is not None:
            out = np.where(out > self.max, self.max, out)
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "column": self.column, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class Bucketize:
    column: str
    bounds: tuple[float, ...]
    kind: str = "bucketize"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.column,)

    def compute(self, x: np.ndarray) -> np.ndarray:
        out = np.searchsorted(np.asarray(self.bounds, dtype=np.float64), x, side="right").astype(np.float64)
        out[np.isnan(x)] = np.nan
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "column": self.column, "bounds": list(self.bounds)}


@dataclass(frozen=True)
class Ratio:
    numerator: str
    denominator: str
    kind: str = "ratio"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.numerator, self.denominator)

    def compute(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.full(len(num), np.nan)
        ok = den != 0  # NaN != 0 is True, and NaN / x is NaN
        with np.errstate(over="ignore"):
            np.divide(num, den, out=out, where=ok)
        out[np.isinf(out)] = np.nan  # an overflow is no number either
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "numerator": self.numerator, "denominator": self.denominator}


@dataclass(frozen=True)
class TargetEncoding:
    """A category's smoothed target mean: (sum + smoothing * prior) / (count + smoothing).

    ``categories``/``values`` are fitted on all training rows; an unseen category gets
    ``prior``, a missing one ``missing`` (the missing rows' own smoothed mean, which is the
    prior when training had none).
    """

    column: str
    folds: int = 5
    smoothing: float = 20.0
    categories: tuple[str, ...] = ()
    values: tuple[float, ...] = ()
    prior: float = float("nan")
    missing: float = float("nan")
    kind: str = "target_encoding"
    _index: dict[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.categories)})

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.column,)

    @property
    def fitted(self) -> bool:
        return not np.isnan(self.prior)

    def fit(self, texts: Sequence[str | None], y: np.ndarray) -> "TargetEncoding":
        codes, names = _codes(texts)
        sums, counts, prior = _stats(codes, np.asarray(y, dtype=np.float64), len(names) + 1)
        enc = self._smooth(sums, counts, prior)
        order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))[:MAX_ENCODED]
        return replace(self, categories=tuple(names[i] for i in order), values=tuple(float(enc[i]) for i in order),
                       prior=float(prior), missing=float(enc[-1]))

    def out_of_fold(self, texts: Sequence[str | None], y: np.ndarray, *, seed: int) -> np.ndarray:
        """Each row encoded by a fit on the other folds (rows dealt to folds at random, by ``seed``)."""
        codes, names = _codes(texts)
        y = np.asarray(y, dtype=np.float64)
        n = len(codes)
        fold = np.empty(n, dtype=np.intp)
        fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % self.folds
        out = np.empty(n)
        size = len(names) + 1
        total_s, total_c, _ = _stats(codes, y, size)
        for k in range(self.folds):
            mine = fold == k
            s_in, c_in, _ = _stats(codes[mine], y[mine], size)
            s, c = total_s - s_in, total_c - c_in
            rest = c.sum()
            prior = s.sum() / rest if rest else float(y.mean()) if n else np.nan
            out[mine] = self._smooth(s, c, prior)[codes[mine]]
        return out

    def _smooth(self, sums: np.ndarray, counts: np.ndarray, prior: float) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            enc = (sums + self.smoothing * prior) / (counts + self.smoothing)
        return np.where(counts > 0, enc, prior)  # no rows (or smoothing 0 and no rows): the prior

    def compute(self, texts: Sequence[str | None]) -> np.ndarray:
        index, values, prior, missing = self._index, self.values, self.prior, self.missing
        return np.fromiter((missing if t is None else values[i] if (i := index.get(t)) is not None else prior
                            for t in texts), dtype=np.float64, count=len(texts))

    def from_codes(self, codes: np.ndarray) -> np.ndarray:
        """The same numbers from codes against ``categories`` (``len(categories)`` unknown, NaN missing)."""
        lookup = np.array([*self.values, self.prior])
        nan = np.isnan(codes)
        out = lookup[np.where(nan, 0, codes).astype(np.intp)]
        out[nan] = self.missing
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "column": self.column, "folds": self.folds, "smoothing": self.smoothing,
                "categories": list(self.categories), "values": list(self.values), "prior": self.prior,
                "missing": self.missing}


def _codes(texts: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """Each text's index among the distinct texts (sorted); None gets the last index, ``len(names)``."""
    names = sorted({t for t in texts if t is not None})
    index = {c: i for i, c in enumerate(names)}
    missing = len(names)
    return np.fromiter((missing if t is None else index[t] for t in texts), dtype=np.intp, count=len(texts)), names


def _stats(codes: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    sums = np.bincount(codes, weights=y, minlength=size)
    counts = np.bincount(codes, minlength=size).astype(np.float64)
    return sums, counts, float(y.mean()) if len(y) else float("nan")


@dataclass(frozen=True)
class Python:
    function: str
    inputs: tuple[str, ...]
    params: Mapping[str, Any]
    sha256: str
    feature: str
    kind: str = "python"
    _call: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def compute(self, *arrays: np.ndarray) -> np.ndarray:
        n = len(arrays[0])
        if n == 0:
            return np.empty(0)
        result = self._call(*arrays, **self.params)  # type: ignore[misc]
        try:
            out = np.array(result, dtype=np.float64)  # a copy: never a view of the inputs or the function's state
        except (TypeError, ValueError):
            out = None
        if out is None or out.shape != (n,):
            got = "values that are not numbers" if out is None else f"shape {out.shape}"
            raise DataValidationError(f"transform {self.function!r} (derived feature {self.feature!r}) returned "
                                      f"{got}; it must return one float per row ({n})",
                                      fix="return a 1-D float array as long as its inputs")
        out[np.isinf(out)] = np.nan
        return out

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "function": self.function, "inputs": list(self.inputs),
                "params": dict(self.params), "sha256": self.sha256}


Derived = Log | Clip | Bucketize | Ratio | TargetEncoding | Python


def python_transform(feature: str, function: str, inputs: Sequence[str], params: Mapping[str, Any], *,
                     sha256: str | None = None, plugins: Sequence[str] = ()) -> Python:
    """A registered function, bound. With ``sha256`` (loading a bundle) its source must still hash to it."""
    entry = registered(function)
    if entry is None:
        listed = f" (the plugins imported: {', '.join(plugins)})" if plugins else ""
        what = (f"derived feature {feature!r} uses transform {function!r}, which is not registered in this "
                f"process{listed}")
        fix = ("import the module that defines it: list it under `plugins:` in the spec, decorated with "
               f"@register_transform({function!r})")
        if sha256 is None:
            raise SpecError(what, fix=fix, field=f"derived.{feature}.function")
        raise StateError("the model cannot be loaded: " + what, fix=fix + ", then load the model again")
    if sha256 is not None and entry.sha256 != sha256:
        raise StateError(f"the model cannot be loaded: transform {function!r} (derived feature {feature!r}, "
                         f"{entry.where}) is not the function the model was trained with: its source hashes to "
                         f"{entry.sha256[:12]}…, the bundle records {sha256[:12]}…",
                         fix="serve with the function's source exactly as it was at training (same code "
                             "version), or train and promote a new model with the new function")
    return Python(function=function, inputs=tuple(inputs), params=dict(params), sha256=entry.sha256,
                  feature=feature, _call=entry.function)


def from_definition(name: str, d: Any, plugins: Sequence[str] = ()) -> Derived:
    """An unfitted transform from the spec's ``derived.NAME`` definition (its JSON form without
    the fitted state)."""
    return from_state(name, d.model_dump(exclude={"description"}), plugins)


def from_state(name: str, state: Mapping[str, Any], plugins: Sequence[str] = ()) -> Derived:
    """A transform from its JSON form (:meth:`state`), as stored in the bundle's pipeline."""
    kind = state["kind"]
    if kind == "log":
        return Log(state["column"])
    if kind == "clip":
        return Clip(state["column"], state["min"], state["max"])
    if kind == "bucketize":
        return Bucketize(state["column"], tuple(state["bounds"]))
    if kind == "ratio":
        return Ratio(state["numerator"], state["denominator"])
    if kind == "target_encoding":
        fitted = {k: tuple(state[k]) if k in ("categories", "values") else state[k]
                  for k in ("categories", "values", "prior", "missing") if k in state}  # none in a definition
        return TargetEncoding(state["column"], folds=state["folds"], smoothing=state["smoothing"], **fitted)
    if kind == "python":  # a definition has no sha256 yet: the registered function's is taken
        return python_transform(name, state["function"], state["inputs"], state["params"],
                                sha256=state.get("sha256"), plugins=plugins)
    raise DataValidationError(f"unknown derived feature kind {kind!r} in the pipeline",
                              fix="load the model with the tidal version that wrote it")
