"""A compiled tree predictor: the LightGBM model compiled to machine code by lleaves.

lleaves (LLVM) turns the model's text into native code that scores the same matrix several
times faster than LightGBM's own ``predict`` on small and mid-size models. It is optional
(``pip install 'tidal[fast]'``) and used only where it agrees with LightGBM: every compiled
model is checked against the native booster before it scores anything. Compilation takes a
second or two, so both users start it in the background and switch over when it is ready.

- Batch scoring (:func:`compile_booster`, :func:`parity`) checks real rows and accepts a
  difference up to :data:`PARITY_TOLERANCE` (lleaves sums the trees in blocks, so the last bit
  of a score may differ).
- Online serving (:func:`compile_exact`) must answer exactly what LightGBM answers, whatever the
  size of the request: it compiles the trees as one block, so that they are summed in
  LightGBM's order, and checks equality on rows built from the model's own split thresholds
  (:func:`edge_rows`: each threshold, the floats either side of it, zero and missing values).

The compiled code lives in memory only: native code is never written to or loaded from the
workspace (a bundle stays a set of verified text files).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PARITY_TOLERANCE = 1e-9  # largest accepted |compiled - native| on the model's output
THREADS = 2


def available() -> bool:
    """Whether lleaves (and a working llvmlite) can be imported."""
    return importlib.util.find_spec("lleaves") is not None


def compile_booster(booster: Any, *, inline: bool = False, one_block: bool = False, threads: int = THREADS,
                    split_from: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """The booster compiled to native code: a function from the feature matrix to ``booster.predict``'s output.

    ``inline`` lets LLVM inline the trees: compiling takes about 1.8 CPU-s instead of 0.5 on our
    models, and predicting takes from 15% (flights) to 70% (fraud) less, which pays only past
    several million rows. ``one_block`` compiles every tree into one block (lleaves' default is
    blocks of 34 trees, kept in cache across rows), so that a row's trees are summed in
    LightGBM's order and the scores come out bit for bit equal. ``threads`` splits a matrix of
    ``split_from`` rows or more between that many threads (1: scored in the calling thread).
    """
    import lleaves

    with tempfile.TemporaryDirectory(prefix="tidal-compile-") as tmp:
        path = Path(tmp) / "model.txt"
        path.write_text(booster.model_to_string())
        model = lleaves.Model(model_file=str(path))
        if one_block:
            model.compile(finline=inline, fblocksize=max(1, model.num_trees()))
        else:
            model.compile(finline=inline)

    return _scorer(model, threads=threads, split_from=split_from)


def _scorer(model: Any, *, threads: int, split_from: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """A function scoring a matrix with the compiled ``model``: its rows split between ``threads``
    threads (the caller's and a pool started at first use) from ``split_from`` rows.

    It calls the compiled entry point (``forest_root(data, out, first_row, end_row)``) itself,
    where ``lleaves.Model.predict`` would start a new thread pool each call and leave a reference
    cycle per call (NumPy's ``ctypes.data_as``): freed only by the garbage collector, dozens of
    matrices at a time, which made a collection during a request take 10-20 ms.
    """
    import ctypes
    from concurrent.futures import ThreadPoolExecutor

    try:
        address = model._execution_engine.get_function_address("forest_root")
        outputs, width = int(model._n_classes), int(model.num_feature())
        fp64 = bool(model.use_fp64)
    except AttributeError:  # another lleaves version: its own predict (same numbers)
        return lambda X: model.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=threads)
    if not address or not fp64:
        raise RuntimeError("the compiled model has no float64 entry point")
    entry = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)(address)
    pool: list[ThreadPoolExecutor] = []

    def predict(X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != width:  # the code reads width values a row: never past the matrix
            raise ValueError(f"the matrix must have {width} columns, not {X.shape[1:] or 'one dimension'}")
        n = len(X)
        if n >= 2**31 - 1:
            raise ValueError("score at most 2**31 - 2 rows at a time")
        out = np.zeros(n if outputs == 1 else (n, outputs))
        data, result = X.__array_interface__["data"][0], out.__array_interface__["data"][0]
        if threads <= 1 or n < max(split_from, 2):
            entry(data, result, 0, n)  # ctypes releases the GIL for the call
            return out
        if not pool:
            pool.append(ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="tidal-score"))
        step = -(-n // threads)
        others = []
        try:  # X and out must outlive every part that reads or writes them: each is waited for
            for start in range(step, n, step):
                others.append(pool[0].submit(entry, data, result, start, min(start + step, n)))
            entry(data, result, 0, step)
        finally:
            for other in others:
                other.result()
        return out

    predict.model = model  # type: ignore[attr-defined]  # the compiled code lives as long as the model
    return predict


def compile_exact(booster: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The booster compiled for online serving (one block; a matrix of :data:`SPLIT_ROWS` rows or
    more is scored in two halves at once, a row's score being its own), or None when its scores
    on :func:`edge_rows` are not exactly ``booster.predict``'s."""
    predict = compile_booster(booster, one_block=True, threads=2, split_from=SPLIT_ROWS)
    X = edge_rows(booster)  # 4,002 rows: checked through the split, as large requests are scored
    if not np.array_equal(predict(X), booster.predict(X, num_threads=1), equal_nan=True):
        return None
    return predict


SPLIT_ROWS = 256  # from this many rows the online model scores two halves at once (two cores)


def edge_rows(booster: Any, *, rows: int = 4000, seed: int = 0) -> np.ndarray:
    """Rows that take every branch of the model's trees: each feature's values are drawn from its
    split thresholds, the floats just below and above each, zero and NaN (a categorical feature's:
    the categories its splits name, the next code up, and NaN), plus one all-zero and one all-NaN row."""
    dump = booster.dump_model()
    n_features = booster.num_feature()
    values: list[set[float]] = [{0.0} for _ in range(n_features)]
    nodes = [tree["tree_structure"] for tree in dump["tree_info"]]
    while nodes:
        node = nodes.pop()
        if "split_feature" not in node:
            continue
        feature, threshold = node["split_feature"], node["threshold"]
        if node["decision_type"] == "==":  # categorical: "3||5||8"
            codes = [float(c) for c in str(threshold).split("||") if c]
            values[feature].update(codes)
            values[feature].add(max(codes, default=0.0) + 1.0)
        else:
            t = float(threshold)
            values[feature].update((t, float(np.nextafter(t, -np.inf)), float(np.nextafter(t, np.inf))))
        nodes += [node["left_child"], node["right_child"]]
    rng = np.random.default_rng(seed)
    X = np.empty((rows + 2, n_features))
    for j, candidates in enumerate(values):
        pool = np.array(sorted(candidates) + [np.nan])
        X[:rows, j] = pool[rng.integers(0, len(pool), rows)]
    X[:rows][rng.random((rows, n_features)) < 0.1] = np.nan  # missing values, in every mix
    X[rows], X[rows + 1] = 0.0, np.nan
    return X


def parity(predict: Callable[[np.ndarray], np.ndarray], booster: Any, X: np.ndarray, *, rows: int = 10_000) -> float:
    """Largest absolute difference between ``predict`` and the native booster on up to ``rows`` rows of ``X``."""
    sample = X[:rows]
    if not len(sample):
        return 0.0
    return float(np.max(np.abs(predict(sample) - booster.predict(sample, num_threads=THREADS))))
