"""The served models by name and version, and their loading and warmup."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hessd.errors import ModelNotFoundError, UnavailableError

from ..engine import EngineConfig, Model, load_model, warmup
from .server_config import ModelSpec

_log = logging.getLogger(__name__)

VERSION = "1"
"""The one version every served model has; an empty requested version means it too."""


class ModelRegistry:
    """Looks up served models; answers only once every model is loaded and warm.

    Args:
        specs: the models to serve.
        engine_config: the engine settings to load each model with.
        safe_mode: Keras safe mode for ``.keras`` files.
    """

    def __init__(
        self, specs: Sequence[ModelSpec], engine_config: EngineConfig, *, safe_mode: bool
    ) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._engine_config = engine_config
        self._safe_mode = safe_mode
        self._models: dict[str, Model] = {}
        self._ready = False

    @property
    def names(self) -> list[str]:
        """The served model names, sorted."""
        return sorted(self._specs)

    def load(self, warmup_batch_sizes: Sequence[int] | None) -> None:
        """Load every model and warm it for ``warmup_batch_sizes``; blocks (seconds).

        A model whose input shapes are not fully known cannot be warmed and
        compiles on first use instead.

        Raises:
            ModelLoadError: a model source could not be loaded.
        """
        for spec in self._specs.values():
            _log.info("loading model %s from %s", spec.name, spec.source)
            model = load_model(
                spec.source, name=spec.name, config=self._engine_config, safe_mode=self._safe_mode
            )
            if any(None in info.shape for info in model.inputs):
                _log.warning("model %s has inputs of unknown size; not warmed", spec.name)
            else:
                warmup(model, warmup_batch_sizes)
            _log.info("model %s ready: %s", spec.name, model.metadata())
            self._models[spec.name] = model
        self._ready = True

    def get(self, name: str, version: str = "") -> Model:
        """The model served as ``name`` at ``version`` (``""`` or ``"1"``).

        Raises:
            ModelNotFoundError: no such model or version.
            UnavailableError: the models are still loading.
        """
        if name not in self._specs:
            raise ModelNotFoundError(
                f"no model named {name!r} is served; served models: {self.names}",
                field="model_name",
            )
        if version not in ("", VERSION):
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; its only version is {VERSION!r} "
                "(or leave model_version empty for the latest)",
                field="model_version",
            )
        if not self._ready:
            raise UnavailableError(
                f"model {name!r} is still loading; retry once health reports SERVING"
            )
        return self._models[name]

    def compile_count(self, name: str) -> int:
        """Functions compiled so far for model ``name``; 0 before it is loaded."""
        model = self._models.get(name)
        return 0 if model is None else model.metadata().compile_count
