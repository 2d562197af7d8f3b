"""The MLflow half of bench_serving.py: save a LightGBM text model as an MLflow model.

Run in MLflow's own venv (.venv-mlflow): ``python bench/mlflow_save.py MODEL_TXT OUT_DIR``.
Loads the booster (the very model.txt of tidal's bundle) and saves it with
``mlflow.lightgbm.save_model`` and a signature of the model's float columns, so that
``mlflow models serve`` validates each request's columns and types, as tidal does.
Prints the MLflow version.
"""

from __future__ import annotations

import sys

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec


def main(model_txt: str, out_dir: str) -> None:
    booster = lgb.Booster(model_file=model_txt)
    inputs = Schema([ColSpec("double", name) for name in booster.feature_name()])
    outputs = Schema([TensorSpec(np.dtype("float64"), (-1,))])
    mlflow.lightgbm.save_model(booster, out_dir, signature=ModelSignature(inputs=inputs, outputs=outputs),
                               pip_requirements=[f"lightgbm=={lgb.__version__}", f"pandas=={pd.__version__}"])
    print(mlflow.__version__)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
