"""The engine: second derivatives of TensorFlow/Keras models with respect to
their inputs, in-process. Models go in, numpy arrays come out.

What lives here: the public library API (:mod:`.api`: ``hessian``,
``gradient``, ``hvp``, ``evaluate``; :mod:`.curvature`: ``hessian_diagonal``,
``hessian_trace``, ``hessian_eigen``, ``hessian_spectrum``, built on
:mod:`.curvature_bodies`, :mod:`.estimators` and :mod:`.lanczos`;
:mod:`.model_loading`: ``load_model``; :mod:`.warmup`), the :class:`~.model.Model` state, request validation, the
batch-independence probe, the derivative bodies (:mod:`.derivatives`), the
compiled-function cache and strategy choice (:mod:`.compiled`), the engine
settings (:mod:`.config`), TensorFlow runtime settings and the demo model.

What it may import: TensorFlow, Keras, numpy and the shared ``hessd.errors``,
``hessd.results``, ``hessd.blocks`` and ``hessd.curvature_options``. Never ``grpc``, ``google.rpc`` or
``hessd_server.serving``, so the engine works in-process without the server
stack (a test enforces it).
"""

from hessd.blocks import join_vector, split_hessian, split_vector
from hessd.results import Diagonal, Eigen, Evaluation, Spectrum, Trace

from .api import evaluate, gradient, hessian, hvp
from .curvature import hessian_diagonal, hessian_eigen, hessian_spectrum, hessian_trace
from .config import EngineConfig
from .demo_model import DEMO_MODEL_SOURCE
from .model import Model, ModelMetadata, TensorInfo
from .model_loading import load_model
from .warmup import warmup

__all__ = [
    "DEMO_MODEL_SOURCE",
    "Diagonal",
    "Eigen",
    "EngineConfig",
    "Evaluation",
    "Model",
    "ModelMetadata",
    "Spectrum",
    "TensorInfo",
    "Trace",
    "evaluate",
    "gradient",
    "hessian",
    "hessian_diagonal",
    "hessian_eigen",
    "hessian_spectrum",
    "hessian_trace",
    "hvp",
    "join_vector",
    "load_model",
    "split_hessian",
    "split_vector",
    "warmup",
]
