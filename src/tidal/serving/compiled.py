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


def compile_booster(booster: Any, *, inline: bool = False, one_block: bool = False,
                    threads: int = THREADS) -> Callable[[np.ndarray], np.ndarray]:
    """The booster compiled to native code: a function from the feature matrix to ``booster.predict``'s output.

    ``inline`` lets LLVM inline the trees: compiling takes about 1.8 CPU-s instead of 0.5 on our
    models, and predicting takes from 15% (flights) to 70% (fraud) less, which pays only past
    several million rows. ``one_block`` compiles every tree into one block (lleaves' default is
    blocks of 34 trees, kept in cache across rows), so that a row's trees are summed in
    LightGBM's order and the scores come out bit for bit equal. ``threads`` splits a matrix
    between that many threads (1: scored in the calling thread).
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

    def predict(X: np.ndarray) -> np.ndarray:
        return model.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=threads)

    return predict


def compile_exact(booster: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The booster compiled for online serving (one block; a matrix of :data:`SPLIT_ROWS` rows or
    more is scored in two halves at once), or None when its scores on :func:`edge_rows` are not
    exactly ``booster.predict``'s."""
    predict = compile_booster(booster, one_block=True, threads=1)
    X = edge_rows(booster)
    if not np.array_equal(predict(X), booster.predict(X, num_threads=1), equal_nan=True):
        return None
    return _in_halves(predict)


SPLIT_ROWS = 256  # from this many rows the online model scores two halves at once (a row's score is its own)


def _in_halves(predict: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``predict``, with a large matrix's first half scored by a helper thread while the caller
    scores the second (the compiled code releases the GIL): on two cores a 1,000-row request's
    model time nearly halves. The helper thread is started once, at the first such matrix."""
    from concurrent.futures import ThreadPoolExecutor

    helper: list[ThreadPoolExecutor] = []

    def scores(X: np.ndarray) -> np.ndarray:
        if len(X) < SPLIT_ROWS:
            return predict(X)
        if not helper:
            helper.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidal-score"))
        X = np.ascontiguousarray(X, dtype=np.float64)
        half = len(X) // 2
        first = helper[0].submit(predict, X[:half])
        second = predict(X[half:])
        return np.concatenate([first.result(), second])

    return scores


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
