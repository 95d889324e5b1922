"""Loads, warms, swaps and unloads model versions: ``--model`` models once, the
model repository on every reload.

A reload compares the repository on disk with the registry, model by model:

- A new version is loaded and warmed while the versions already AVAILABLE go
  on answering; once warm it becomes AVAILABLE in one step, and the versions
  its model's policy no longer selects are drained (no new calls; the running
  ones finish) and unloaded.
- A version that fails to load or warm is FAILED with its error and the policy
  falls back to the next newest versions, so the previous version keeps
  serving. It is retried once its files (or the model's config.toml settings) change.
- An AVAILABLE version whose files or whose model's config.toml settings
  changed (see :class:`~.model_repository.Fingerprint`) is loaded and warmed
  again while it goes on answering, and the new load replaces it in one step.
  If the new load fails, the version serves on as it was, with the failure as
  its error (in ListModels and the log); those files are not tried again until
  they change again.
- A model folder's problems (a broken config.toml, model files not laid out
  as the repository needs) are logged once each, when they appear or change,
  not on every poll.
- A version whose folder is removed is drained and unloaded; a model whose
  folder is removed goes entirely.
- Polling (``explicit=False``) loads a new or changed version only once two
  scans in a row saw the same files, so a version being copied in is not
  loaded half-written. An explicit reload (start-up, SIGHUP, ReloadRepository,
  LoadModel) loads what it finds.

Every method blocks (loading takes seconds) and runs on one loading thread at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from hessd.errors import InvalidArgumentError, ModelLoadError, ModelNotFoundError, clipped

from ...engine import EngineConfig, Model, load_model
from ...engine.config import DEFAULT_WARMUP_METHODS, DEFAULT_WARMUP_PRECISIONS
from ...engine.warmup import warmup
from ..observability.metrics import Metrics
from ..server_config import ModelSpec
from .model_registry import FIXED_VERSION, ModelRegistry, ModelState, ServedVersion
from .model_repository import ModelFolder, VersionFolder, scan, scan_model
from .repository_config import ModelConfig

_log = logging.getLogger(__name__)


class ModelLoader:
    """Keeps ``registry`` in step with ``--model`` specs and the model repository.

    Args:
        registry: where versions and their states are kept.
        metrics: where load times and failures are reported.
        engine_config: the server's engine settings, which a model's
            config.toml may override.
        warmup_batch_sizes: batch sizes warmed before a version serves, unless
            its config.toml says otherwise; ``None``: the engine's default.
        warmup_methods: methods warmed, unless its config.toml says otherwise.
        warmup_precisions: precisions warmed, unless its config.toml says
            otherwise; of those, only the ones the model's config.toml allows.
        safe_mode: Keras safe mode for ``.keras`` files.
        repository: the model repository folder, if any.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        engine_config: EngineConfig,
        warmup_batch_sizes: Sequence[int] | None,
        warmup_methods: Sequence[str] = DEFAULT_WARMUP_METHODS,
        warmup_precisions: Sequence[str] = DEFAULT_WARMUP_PRECISIONS,
        safe_mode: bool,
        repository: Path | None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._engine_config = engine_config
        self._warmup_batch_sizes = warmup_batch_sizes
        self._warmup_methods = tuple(warmup_methods)
        self._warmup_precisions = tuple(warmup_precisions)
        self._safe_mode = safe_mode
        self._repository = repository
        self._previous_scan: dict[tuple[str, int], object] = {}
        self._reported: dict[str, tuple[object, ...]] = {}
        self._unloaded_by_admin: set[str] = set()
        self._lock = threading.Lock()

    def load_fixed(self, specs: Sequence[ModelSpec]) -> None:
        """Load and warm each ``--model`` model as version 1.

        Raises:
            ModelLoadError: a model could not be loaded; ``ValueError``: not warmed.
        """
        for spec in specs:
            self._registry.add_model(spec.name, fixed=True)
            self._track(spec.name)
        for spec in specs:
            self._registry.set_loading(spec.name, FIXED_VERSION, None)
            try:
                model = self._loaded(spec.name, spec.source, self._engine_config, ModelConfig())
            except Exception as error:
                self._registry.set_failed(spec.name, FIXED_VERSION, _reason(error), None)
                raise
            self._registry.set_available(spec.name, FIXED_VERSION, model)

    def check_repository(self) -> None:
        """Refuse to start on a repository that is not a readable folder.

        Raises:
            ModelLoadError: it is missing or not a folder.
        """
        if self._repository is not None and not self._repository.is_dir():
            raise ModelLoadError(f"the model repository {str(self._repository)!r} is not a folder")

    def reload(self, *, explicit: bool) -> None:
        """Bring every repository model in step with the repository (see the module doc)."""
        if self._repository is None:
            return
        with self._lock:
            try:
                folders = scan(self._repository)
            except OSError as error:
                _log.error("cannot read the model repository %s: %s", self._repository, error)
                return
            known = {name for name in self._registry.names if not self._registry.is_fixed(name)}
            for name in sorted(known | set(folders)):
                folder = folders.get(name)
                if folder is None:
                    self._remove(name)
                elif self._registry.is_fixed(name):
                    _log.warning("repository folder %s is ignored: --model serves %s", name, name)
                elif name not in self._unloaded_by_admin:
                    self._sync(folder, explicit=explicit)
            self._previous_scan = {
                (name, number): version.fingerprint
                for name, folder in folders.items()
                for number, version in folder.versions.items()
            }

    def load_model(self, name: str) -> None:
        """Load repository model ``name`` now and let polling keep it current again.

        Raises:
            InvalidArgumentError: ``name`` is not a model name, or is a ``--model`` model.
            ModelNotFoundError: the repository has no folder ``name``.
        """
        self._check_administered(name)
        with self._lock:
            folder = self._folder(name)
            self._unloaded_by_admin.discard(name)
            self._sync(folder, explicit=True)

    def unload_model(self, name: str) -> None:
        """Drain and unload every version of repository model ``name``; polling leaves it
        unloaded until :meth:`load_model`.

        Raises:
            InvalidArgumentError: ``name`` is not a model name, or is a ``--model`` model.
            ModelNotFoundError: the model is neither served nor in the repository.
        """
        self._check_administered(name)
        with self._lock:
            if name not in self._registry.names:
                self._folder(name)
            self._unloaded_by_admin.add(name)
            self._remove(name)

    def _check_administered(self, name: str) -> None:
        if self._repository is None:
            raise InvalidArgumentError(
                "the server has no model repository (--model-repository) to load models from",
                field="model_name",
                reason="MODEL_REPOSITORY_NOT_CONFIGURED",
            )
        if self._registry.is_fixed(name):
            raise InvalidArgumentError(
                f"model {name!r} is served with --model, which is not reloaded or unloaded; "
                "serve it from the model repository instead",
                field="model_name",
                reason="MODEL_NOT_ADMINISTERED",
            )

    def _folder(self, name: str) -> ModelFolder:
        assert self._repository is not None
        try:
            folder = scan_model(self._repository, name)
        except ValueError as error:
            raise InvalidArgumentError(str(error), field="model_name", reason="MODEL_NAME_INVALID") from error
        if folder is None:
            raise ModelNotFoundError(
                f"the model repository has no model folder {clipped(name)}", field="model_name"
            )
        return folder

    def _remove(self, name: str) -> None:
        self._reported.pop(name, None)
        for number, served in sorted(self._registry.versions(name).items()):
            if served.state is ModelState.FAILED:
                self._registry.forget(name, number)
            else:
                self._unload(name, number)
        self._registry.remove_model(name)

    def _sync(self, folder: ModelFolder, *, explicit: bool) -> None:
        name = folder.name
        self._registry.add_model(name, fixed=False)
        self._track(name)
        self._registry.set_folder_problems(
            name, error=folder.error, layout_errors=folder.layout_errors
        )
        self._report_problems(folder)
        if folder.error is not None:
            return
        for number, served in self._registry.versions(name).items():
            on_disk = folder.versions.get(number)
            if served.state is ModelState.FAILED and (
                on_disk is None or on_disk.fingerprint != served.fingerprint
            ):
                self._registry.forget(name, number)  # gone or rewritten: a later scan retries it
        candidates = {
            number
            for number, version in folder.versions.items()
            if explicit
            or number in self._registry.versions(name)
            or self._previous_scan.get((name, number)) == version.fingerprint
        }
        policy = folder.config.version_policy
        while True:
            served = self._registry.versions(name)
            eligible = {n for n in candidates if n not in served or served[n].state is not ModelState.FAILED}
            selected = policy.select(eligible)
            pending = sorted(
                (
                    n
                    for n in selected
                    if n not in served
                    or served[n].state is not ModelState.AVAILABLE
                    or self._changed(served[n], folder.versions[n], explicit=explicit)
                ),
                reverse=True,
            )
            if not pending:
                break
            replacing = pending[0] in served and served[pending[0]].state is ModelState.AVAILABLE
            self._load_version(
                name, folder.versions[pending[0]], folder.config, replacing=replacing
            )
        served = self._registry.versions(name)
        selected_available = any(served[n].state is ModelState.AVAILABLE for n in selected)
        for number, version in sorted(served.items()):
            if version.state is not ModelState.AVAILABLE or number in selected:
                continue
            if number not in folder.versions or selected_available:
                _log.info("model %s: unloading version %d (policy %s)", name, number, policy)
                self._unload(name, number)

    def _changed(self, served: ServedVersion, on_disk: VersionFolder, *, explicit: bool) -> bool:
        """Whether AVAILABLE ``served`` is to be loaded anew from ``on_disk``: its
        files changed, not to ones that failed already, and (when polling) two
        scans in a row saw them."""
        return (
            on_disk.fingerprint != served.fingerprint
            and on_disk.fingerprint != served.rejected_fingerprint
            and (
                explicit
                or self._previous_scan.get((served.name, served.version)) == on_disk.fingerprint
            )
        )

    def _report_problems(self, folder: ModelFolder) -> None:
        """Log ``folder``'s problems that were not logged before: a folder error once
        per content of config.toml, each layout error once."""
        name = folder.name
        reported = self._reported.get(name, (None, None, ()))
        if folder.error is not None and (folder.error, folder.config_stamp) != reported[:2]:
            _log.error("model %s: %s; its loaded versions go on serving", name, folder.error)
        for problem in folder.layout_errors:
            if problem not in reported[2]:
                _log.error("model %s: layout error: %s", name, problem)
        self._reported[name] = (folder.error, folder.config_stamp, folder.layout_errors)

    def _load_version(
        self, name: str, folder: VersionFolder, config: ModelConfig, *, replacing: bool = False
    ) -> None:
        """Load and warm version ``folder``; once warm it is AVAILABLE in one step.

        ``replacing``: the version is AVAILABLE and its files changed; it goes
        on serving while the new load runs, and if that fails.
        """
        number = folder.version
        if replacing:
            _log.info(
                "model %s: version %d changed; loading it again while the loaded one serves",
                name,
                number,
            )
        else:
            self._registry.set_loading(name, number, folder.fingerprint)
        try:
            if folder.error is not None:
                raise InvalidArgumentError(folder.error)
            assert folder.source is not None
            model = self._loaded(
                name,
                str(folder.source),
                config.engine_config(self._engine_config),
                config,
                number,
            )
        except Exception as error:
            reason = _reason(error)
            self._metrics.count_load_failure(name)
            if replacing:
                _log.error(
                    "model %s: version %d: its changed files FAILED to load: %s; it goes on "
                    "serving what it was loaded from",
                    name,
                    number,
                    reason,
                )
                self._registry.set_reload_failed(
                    name,
                    number,
                    f"its changed files failed to load ({reason}); it serves the files "
                    "loaded before",
                    folder.fingerprint,
                )
                return
            _log.error("model %s: version %d FAILED: %s", name, number, reason)
            self._registry.set_failed(name, number, reason, folder.fingerprint)
            return
        self._registry.set_available(
            name, number, model, fingerprint=folder.fingerprint, precisions=config.precisions
        )
        changed = " from its changed files" if replacing else ""
        _log.info("model %s: version %d AVAILABLE%s", name, number, changed)

    def _loaded(
        self,
        name: str,
        source: str,
        engine_config: EngineConfig,
        config: ModelConfig,
        version: int = FIXED_VERSION,
    ) -> Model:
        """``source`` loaded and warmed as ``config`` (or the server) says; load and
        warm-up times go to the metrics."""
        _log.info("model %s: loading version %d from %s", name, version, source)
        started = time.perf_counter()
        model = load_model(source, name=name, config=engine_config, safe_mode=self._safe_mode)
        loaded = time.perf_counter()
        if any(None in info.shape for info in model.inputs):
            _log.warning("model %s has inputs of unknown size; not warmed", name)
        else:
            sizes, methods, precisions = config.warmup_plan(
                self._warmup_batch_sizes, self._warmup_methods, self._warmup_precisions
            )
            warmup(model, sizes, methods=methods, precisions=precisions)
        warmed = time.perf_counter()
        self._metrics.observe_load(name, str(version), loaded - started, warmed - loaded)
        metadata = model.metadata()
        _log.info(
            "model %s: version %d ready in %.1fs (load %.1fs, warm-up %.1fs, %d compiled functions)",
            name, version, warmed - started, loaded - started, warmed - loaded, metadata.compile_count,
        )
        _log.debug("model %s: version %d: %s", name, version, metadata)
        return model

    def _unload(self, name: str, number: int) -> None:
        self._registry.drain(name, number)
        _log.info("model %s: version %d unloaded", name, number)

    def _track(self, name: str) -> None:
        self._metrics.track_compiles(name, lambda: self._registry.compile_count(name))
        self._metrics.track_evictions(name, lambda: self._registry.evictions(name))


def _reason(error: Exception) -> str:
    """A one-line account of why a version could not be loaded or warmed."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return message.strip().splitlines()[0][:500] if message.strip() else type(error).__name__
