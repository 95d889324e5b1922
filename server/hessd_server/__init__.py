"""hessd_server: the in-process Hessian engine (TensorFlow) and its gRPC server.

>>> import numpy as np, hessd_server as hs
>>> m = hs.load_model(hs.DEMO_MODEL_SOURCE)
>>> hs.hessian(m, np.ones((3, 10), np.float32)).shape
(3, 10, 10)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from hessd.results import Evaluation

from .config import EngineConfig
from .demo_model import DEMO_MODEL_SOURCE
from .engine import evaluate, gradient, hessian, hvp
from .model import Model, ModelMetadata, TensorInfo
from .model_loading import load_model

__all__ = [
    "DEMO_MODEL_SOURCE",
    "EngineConfig",
    "Evaluation",
    "Model",
    "ModelMetadata",
    "TensorInfo",
    "evaluate",
    "gradient",
    "hessian",
    "hvp",
    "load_model",
]
