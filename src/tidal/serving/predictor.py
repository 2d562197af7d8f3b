"""The predictor: a verified bundle turned into decisions, on the hot path (NumPy, no pandas).

Small requests skip ``Booster.predict``'s per-call set-up (it builds an inner predictor and
a parameter string each time: about 90 us for one row) and go through LightGBM's own
single-row C API (``LGBM_BoosterPredictForMatSingleRowFast``), prepared once per predictor:
the same trees, the same code, the same numbers, in about 5 us a row.

Larger requests are scored by the model compiled by lleaves (:func:`compiled.compile_exact`:
the trees summed in LightGBM's order, checked equal to LightGBM at compile time), two to three
times faster than ``Booster.predict``, once :meth:`Predictor.compile` has run: the server
starts it in a background thread at the first request of more than :data:`SMALL_BATCH` rows
(about 1.5 CPU-s, once per model version). Until it is ready, and for good when lleaves is not
installed or the check fails, they go to ``Booster.predict``. Either way the numbers are LightGBM's.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tidal.registry.bundle import Bundle
from tidal.serving import compiled
from tidal.serving.columns import RecordColumns
from tidal.serving.decision import DecisionRule

log = logging.getLogger("tidal.serving")


class Predictor:
    """Scores records with one model version. Immutable once built, so a swap is one assignment."""

    def __init__(self, *, version: int, bundle: Bundle) -> None:
        self.version = version
        self.bundle = bundle
        self.rule = DecisionRule.from_signature(bundle.signature)  # the same rule as batch scoring
        rule = self.rule
        self.task, self.threshold, self.offset = rule.task, rule.threshold, rule.offset
        self.positive, self.negative, self.act, self.no_act = rule.positive, rule.negative, rule.act, rule.no_act
        self._booster = bundle.booster
        self._pipeline = bundle.pipeline
        self._rows: _SingleRows | None = None  # prepared on first use; None if LightGBM's C API refuses
        self._rows_ready = False
        self._rows_lock = threading.Lock()
        self._compiled: Callable[[np.ndarray], np.ndarray] | None = None  # set once compiled and checked
        self._compile_started = False

    def scores(self, records: Sequence[Mapping[str, Any]] | RecordColumns) -> np.ndarray:
        """The model's score of each record (a list of records, or a large request's columns)."""
        return self.predict(self.matrix(records))

    def matrix(self, records: Sequence[Mapping[str, Any]] | RecordColumns) -> np.ndarray:
        """The records' feature matrix, as the model reads it."""
        if isinstance(records, RecordColumns) and records.rows is not None:
            return self._pipeline.transform_rows(records.names, records.rows, lambda: records.columns)
        if isinstance(records, RecordColumns):
            return self._pipeline.transform(records.columns, n_rows=len(records))
        return self._pipeline.transform_records(records)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``Booster.predict(X)``'s numbers, by the fastest engine ready for a matrix of this size."""
        if len(X) <= SMALL_BATCH:
            if (rows := self._single_rows()) is not None and rows.fits(X):
                return rows.predict(X)
        elif (fast := self._compiled) is not None:
            return fast(X)
        return self._booster.predict(X, num_threads=1)

    def compile(self) -> bool:
        """Compile the model and check it now, in this thread; True when large requests will use it
        (False, and they keep ``Booster.predict``, without lleaves or when the check fails)."""
        with self._rows_lock:
            self._compile_started = True
        if self._compiled is None and compiled.available():
            try:
                fast = compiled.compile_exact(self._booster)
            except Exception:  # noqa: BLE001 - Booster.predict gives the same answers, only slower
                log.warning("version %s: could not compile the model; scoring natively", self.version, exc_info=True)
                return False
            if fast is None:
                log.warning("version %s: the compiled model does not score exactly as LightGBM; scoring natively",
                            self.version)
                return False
            self._compiled = fast  # one assignment: a request sees the engine before or after, both exact
        return self._compiled is not None

    def compile_in_background(self) -> None:
        """Start :meth:`compile` in a thread, the first time only (a no-op without lleaves)."""
        if self._compile_started:
            return
        with self._rows_lock:
            if self._compile_started:
                return
            self._compile_started = True
        if compiled.available():  # not a daemon: exiting while LLVM compiles could crash the process
            threading.Thread(target=self.compile, name=f"tidal-compile-v{self.version}", daemon=False).start()

    def _single_rows(self) -> "_SingleRows | None":
        if not self._rows_ready:
            with self._rows_lock:
                if not self._rows_ready:
                    try:
                        self._rows = _SingleRows(self._booster)
                    except Exception:  # noqa: BLE001 - Booster.predict gives the same answers, only slower
                        log.warning("LightGBM's single-row API is not available; using Booster.predict", exc_info=True)
                    self._rows_ready = True
        return self._rows

    def outputs(self, scores: np.ndarray) -> tuple[list[Any], list[float | None], list[Any]]:
        """(prediction, probability, decision) lists for ``scores``."""
        return self.rule.lists(scores)


SMALL_BATCH = 8  # up to this many rows, one single-row call per row beats one Booster.predict
_FLOAT64, _PREDICT_NORMAL = 1, 0  # LightGBM's C_API_DTYPE_FLOAT64 and C_API_PREDICT_NORMAL


class _SingleRows:
    """LightGBM's fast single-row prediction, set up once for a booster with ``Booster.predict``'s
    defaults (normal output, ``best_iteration`` or every tree, one thread). The C side holds a
    lock per booster, so threads may share it."""

    def __init__(self, booster: Any) -> None:
        from lightgbm.basic import _LIB, _c_str, _safe_call

        self.n_features = booster.num_feature()
        self.one_output = booster.num_model_per_iteration() == 1  # one score a row (not multiclass)
        lib = ctypes.CDLL(_LIB._name)  # own function objects: argtypes set here leave LightGBM's untouched
        self._call = lib.LGBM_BoosterPredictForMatSingleRowFast
        self._call.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p]
        self._safe_call = _safe_call
        handle = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(_PREDICT_NORMAL), ctypes.c_int(0), ctypes.c_int(booster.best_iteration),
            ctypes.c_int(_FLOAT64), ctypes.c_int32(self.n_features), _c_str("num_threads=1"), ctypes.byref(handle)))
        self._handle = handle
        self._booster = booster  # the config points into it: keep it alive as long as the config
        weakref.finalize(self, _LIB.LGBM_FastConfigFree, handle)

    def fits(self, X: np.ndarray) -> bool:
        return (self.one_output and X.ndim == 2 and X.shape[1] == self.n_features and X.dtype == np.float64
                and X.flags.c_contiguous)

    def predict(self, X: np.ndarray) -> np.ndarray:
        n = len(X)
        out = np.empty(n)
        out_len = ctypes.c_int64(0)
        data, step, result = X.ctypes.data, X.strides[0], out.ctypes.data
        for i in range(n):
            self._safe_call(self._call(self._handle, data + i * step, ctypes.byref(out_len), result + 8 * i))
        return out
