"""Where an optimizer's derivatives come from: a served model or an in-process one.

:func:`model_source` turns what a caller passes (``hessd.Client`` and a model name, or
an in-process ``hessd_server`` model) into a :class:`ModelSource`, the three calls the
optimizers need, each counted under its RPC name. The in-process side calls
``hessd_server``'s functions only when the source is one of its models (or a Keras
model), so the SDK never imports TensorFlow itself.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Protocol

import numpy as np

from hessd._sync.client import Client
from hessd.errors import InvalidArgumentError
from hessd.results import Evaluation, ModelMetadata


class ModelSource(Protocol):
    """The calls an optimizer makes of one model; ``calls`` counts them by RPC name
    (``"GetModelMetadata"``, ``"Evaluate"``, ``"HessianVectorProduct"``)."""

    calls: Counter[str]
    name: str

    def metadata(self) -> ModelMetadata:
        """The model's inputs and outputs."""

    def evaluate(self, x: Any, *, output_weights: Any, wrt: str | None, precision: str) -> Evaluation:
        """Value (n,), gradient (n, *S) and per-example Hessian blocks (n, *S, *S) at ``x``."""

    def hvp(self, x: Any, v: np.ndarray, *, output_weights: Any, wrt: str | None, precision: str) -> np.ndarray:
        """Hessian-vector products (n, *S) at ``x``."""


class ServedModel:
    """Model ``name`` (at ``model_version``) of the server ``client`` talks to."""

    def __init__(self, client: Client, name: str, model_version: str | None) -> None:
        self.calls: Counter[str] = Counter()
        self.name = name
        self._client = client
        self._model_version = model_version

    def metadata(self) -> ModelMetadata:
        self.calls["GetModelMetadata"] += 1
        return self._client.metadata(self.name, model_version=self._model_version)

    def evaluate(self, x: Any, *, output_weights: Any, wrt: str | None, precision: str) -> Evaluation:
        self.calls["Evaluate"] += 1
        return self._client.evaluate(
            self.name, x, output_weights=output_weights, wrt=wrt, precision=precision, model_version=self._model_version
        )

    def hvp(self, x: Any, v: np.ndarray, *, output_weights: Any, wrt: str | None, precision: str) -> np.ndarray:
        self.calls["HessianVectorProduct"] += 1
        return self._client.hvp(
            self.name, x, v, output_weights=output_weights, wrt=wrt, precision=precision, model_version=self._model_version
        )


class InProcessModel:
    """A ``hessd_server.Model`` computed in this process by ``hessd_server``'s functions;
    ``calls`` counts them under the names of the RPCs they mirror."""

    def __init__(self, library: Any, model: Any) -> None:
        self.calls: Counter[str] = Counter()
        self._library = library
        self._model = model
        self.name = model.name

    def metadata(self) -> ModelMetadata:
        self.calls["GetModelMetadata"] += 1
        return self._model.metadata()

    def evaluate(self, x: Any, *, output_weights: Any, wrt: str | None, precision: str) -> Evaluation:
        self.calls["Evaluate"] += 1
        return self._library.evaluate(self._model, x, output_weights=output_weights, wrt=wrt, precision=precision)

    def hvp(self, x: Any, v: np.ndarray, *, output_weights: Any, wrt: str | None, precision: str) -> np.ndarray:
        self.calls["HessianVectorProduct"] += 1
        return self._library.hvp(self._model, x, v, output_weights=output_weights, wrt=wrt, precision=precision)


def model_source(source: Any, model: str | None, model_version: str | None) -> ModelSource:
    """The :class:`ModelSource` for ``source`` and ``model``.

    Args:
        source: a ``hessd.Client`` (then ``model`` names a served model), or an
            in-process ``hessd_server.Model`` or Keras model (then ``model`` is ``None``).
        model: the served model's name.
        model_version: the served version to use; ``None`` for the newest AVAILABLE one.

    Raises:
        InvalidArgumentError: ``source`` is neither, or ``model`` does not fit it.
    """
    if isinstance(source, Client):
        if not isinstance(model, str) or not model:
            raise InvalidArgumentError(
                "with a hessd.Client as source, model must name a served model, e.g. Objective(client, \"surrogate\")",
                field="model",
                reason="MODEL_NAME_REQUIRED",
            )
        return ServedModel(source, model, model_version)
    library = _in_process_library(source)
    if library is None:
        raise InvalidArgumentError(
            f"source must be a hessd.Client or an in-process model (hessd_server.load_model(...) or a "
            f"keras.Model), not {type(source).__name__}",
            field="source",
            reason="UNSUPPORTED_SOURCE",
        )
    if model is not None or model_version is not None:
        raise InvalidArgumentError(
            "an in-process source is the model itself: leave model and model_version out",
            field="model",
            reason="UNSUPPORTED_SOURCE",
        )
    in_process = source if isinstance(source, library.Model) else library.load_model(source)
    return InProcessModel(library, in_process)


def _in_process_library(source: Any) -> Any | None:
    """``hessd_server`` when ``source`` is one of its models or a Keras model, else ``None``.

    Only modules the caller has imported already are consulted, so a client-only
    program never loads TensorFlow here.
    """
    server = sys.modules.get("hessd_server")
    keras = sys.modules.get("keras")
    if server is not None and isinstance(source, server.Model):
        return server
    if keras is not None and isinstance(source, keras.Model):
        import hessd_server

        return hessd_server
    return None
