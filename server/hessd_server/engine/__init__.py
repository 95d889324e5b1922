"""The engine: second derivatives of TensorFlow/Keras models with respect to
their inputs, in-process. Models go in, numpy arrays come out.

What lives here: the public library API (:mod:`.api`: ``hessian``,
``gradient``, ``hvp``, ``evaluate``; :mod:`.model_loading`: ``load_model``;
:mod:`.warmup`), the :class:`~.model.Model` state, request validation, the
batch-independence probe, the derivative bodies (:mod:`.derivatives`), the
compiled-function cache and strategy choice (:mod:`.compiled`), the engine
settings (:mod:`.config`), TensorFlow runtime settings and the demo model.

What it may import: TensorFlow, Keras, numpy and the shared ``hessd.errors``
and ``hessd.results``. Never ``grpc``, ``google.rpc`` or
``hessd_server.serving``, so the engine works in-process without the server
stack (a test enforces it).
"""

from hessd.results import Evaluation

from .api import evaluate, gradient, hessian, hvp
from .config import EngineConfig
from .demo_model import DEMO_MODEL_SOURCE
from .model import Model, ModelMetadata, TensorInfo
from .model_loading import load_model
from .warmup import warmup

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
    "warmup",
]
