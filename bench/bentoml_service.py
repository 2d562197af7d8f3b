"""The BentoML half of bench_serving.py: a BentoML 1.4 service serving tidal's exported booster.

Run in BentoML's own venv (.venv-bentoml): bench_serving.py copies this file into a temp
folder and starts ``bentoml serve bentoml_service:Svc`` there, with BENCH_MODEL_FILE naming
the LightGBM text model (the very model.txt of tidal's bundle). Like tidal's server it
validates every request against a pydantic model of the features and logs every prediction
(BentoML's own ``bentoml.monitor``, written under ./monitoring); access logs are off, as in
tidal and in the MLflow run.

- ``POST /predict``: one record, ``{"V1": 0.1, ..., "Amount": 12.5}`` -> the probability;
- ``POST /predict_batch``: ``{"rows": [record, ...]}`` -> a list of probabilities.
"""

from __future__ import annotations

import os

import bentoml
import lightgbm as lgb
import numpy as np
from pydantic import create_model

MODEL_FILE = os.environ["BENCH_MODEL_FILE"]
FEATURES = lgb.Booster(model_file=MODEL_FILE).feature_name()  # the model's column order
Row = create_model("Row", **{name: (float, ...) for name in FEATURES})  # type: ignore[call-overload]


@bentoml.service(logging={"access": {"enabled": False}})
class Svc:
    def __init__(self) -> None:
        self.booster = lgb.Booster(model_file=MODEL_FILE)

    @bentoml.api(input_spec=Row)
    def predict(self, **row: float) -> float:
        x = np.array([[row[name] for name in FEATURES]], dtype=np.float64)
        probability = float(self.booster.predict(x, num_threads=1)[0])
        with bentoml.monitor("fraud") as mon:
            for name in FEATURES:
                mon.log(row[name], name=name, role="feature", data_type="numerical")
            mon.log(probability, name="probability", role="prediction", data_type="numerical")
        return probability

    @bentoml.api
    def predict_batch(self, rows: list[Row]) -> list[float]:  # type: ignore[valid-type]
        x = np.array([[getattr(r, name) for name in FEATURES] for r in rows], dtype=np.float64)
        probabilities = self.booster.predict(x, num_threads=1).tolist()
        with bentoml.monitor("fraud") as mon:
            for j, name in enumerate(FEATURES):
                mon.log_batch(x[:, j].tolist(), name=name, role="feature", data_type="numerical")
            mon.log_batch(probabilities, name="probability", role="prediction", data_type="numerical")
        return probabilities
