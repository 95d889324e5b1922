"""hessd_server: the in-process Hessian engine (TensorFlow) and its gRPC server.

Two subpackages and this thin top:

* :mod:`hessd_server.engine` computes: the library API re-exported here
  (``load_model``, ``hessian``, ``gradient``, ``hvp``, ``evaluate``, the
  curvature summaries ``hessian_diagonal``, ``hessian_trace``,
  ``hessian_eigen``, ``hessian_spectrum``, ``warmup``, ``Model``,
  ``EngineConfig``, and ``split_hessian``, ``split_vector``, ``join_vector``
  of :mod:`hessd.blocks`). It never imports gRPC.
* :mod:`hessd_server.serving` serves: server assembly, the servicer, the
  interceptor, admission, metrics, configuration and ``hessd-server``'s
  ``main``. It imports the engine; the engine never imports it.

>>> import numpy as np, hessd_server as hs
>>> m = hs.load_model(hs.DEMO_MODEL_SOURCE)
>>> hs.hessian(m, np.ones((3, 10), np.float32)).shape
(3, 10, 10)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from typing import TYPE_CHECKING, Any

from hessd._version import __version__

from . import engine

if TYPE_CHECKING:
    from .engine import (
        DEMO_MODEL_SOURCE,
        Diagonal,
        Eigen,
        EngineConfig,
        Evaluation,
        Model,
        ModelMetadata,
        Spectrum,
        TensorInfo,
        Trace,
        evaluate,
        gradient,
        hessian,
        hessian_diagonal,
        hessian_eigen,
        hessian_spectrum,
        hessian_trace,
        hvp,
        join_vector,
        load_model,
        split_hessian,
        split_vector,
        warmup,
    )

__all__ = ["__version__", *engine.__all__]


def __getattr__(name: str) -> Any:
    """The library API's names, imported on first use (PEP 562): importing this package
    loads no TensorFlow, so ``hessd-server --help`` starts at once."""
    if name not in engine.EXPORTED_FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = engine.exported(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
