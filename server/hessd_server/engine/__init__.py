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
``hessd.results`` and ``hessd.curvature_options``. Never ``grpc``, ``google.rpc`` or
``hessd_server.serving``, so the engine works in-process without the server
stack (a test enforces it).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hessd.blocks import join_vector, split_hessian, split_vector
    from hessd.results import Diagonal, Eigen, Evaluation, Spectrum, Trace

    from .api import evaluate, gradient, hessian, hvp
    from .config import DEMO_MODEL_SOURCE, EngineConfig
    from .curvature import hessian_diagonal, hessian_eigen, hessian_spectrum, hessian_trace
    from .model import Model, ModelMetadata, TensorInfo
    from .model_loading import load_model
    from .warmup import warmup

EXPORTED_FROM: dict[str, str] = {
    "DEMO_MODEL_SOURCE": "hessd_server.engine.config",
    "Diagonal": "hessd.results",
    "Eigen": "hessd.results",
    "EngineConfig": "hessd_server.engine.config",
    "Evaluation": "hessd.results",
    "Model": "hessd_server.engine.model",
    "ModelMetadata": "hessd_server.engine.model",
    "Spectrum": "hessd.results",
    "TensorInfo": "hessd_server.engine.model",
    "Trace": "hessd.results",
    "evaluate": "hessd_server.engine.api",
    "gradient": "hessd_server.engine.api",
    "hessian": "hessd_server.engine.api",
    "hessian_diagonal": "hessd_server.engine.curvature",
    "hessian_eigen": "hessd_server.engine.curvature",
    "hessian_spectrum": "hessd_server.engine.curvature",
    "hessian_trace": "hessd_server.engine.curvature",
    "hvp": "hessd_server.engine.api",
    "join_vector": "hessd.blocks",
    "load_model": "hessd_server.engine.model_loading",
    "split_hessian": "hessd.blocks",
    "split_vector": "hessd.blocks",
    "warmup": "hessd_server.engine.warmup",
}
"""Each public name of the library API -> the module that defines it. The names are
imported on first use (PEP 562), so that importing the package, or a TensorFlow-free
module of it such as :mod:`.config`, does not load TensorFlow. ``warmup`` is both the
function and its submodule's name: ``from hessd_server.engine import warmup`` gives the
function only while the submodule is not yet imported, so code inside the package
imports it as ``from .warmup import warmup``."""

__all__ = list(EXPORTED_FROM)


def exported(name: str) -> Any:
    """The library API's ``name``, imported from the module that defines it.

    Raises:
        AttributeError: ``name`` is not one of :data:`EXPORTED_FROM`.
    """
    try:
        module = EXPORTED_FROM[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(import_module(module), name)


def __getattr__(name: str) -> Any:
    value = exported(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
