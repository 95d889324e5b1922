"""The served models by name and version, with each version's state and its calls in flight.

A version is LOADING, AVAILABLE, FAILED (with its error) or UNLOADING. Only
AVAILABLE versions answer requests; a request without a version gets the
newest AVAILABLE one, and a request names a version as its folder is named (a
positive decimal integer without leading zeros). An AVAILABLE version whose
files changed is replaced in one step once its new load is warm; if that load
fails, the version keeps serving what it had and carries the failure as its
error. Each call holds its version (:meth:`ModelRegistry.acquired`) while it computes, so a version taken out of service (UNLOADING) is unloaded
only once the calls already running on it have finished (:meth:`ModelRegistry.drain`).

The registry is shared by the event loop (lookups) and the loading thread
(state changes); one lock guards it.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from hessd.errors import (
    InvalidArgumentError,
    ModelNotFoundError,
    PrecisionError,
    UnavailableError,
    clipped,
)
from hessd.results import ModelStatus, VersionStatus

from ...engine import Model
from ..observability.metrics import Metrics
from .model_repository import EXPECTED_LAYOUT, VERSION_NAME

FIXED_VERSION = 1
"""The version of a model given with ``--model``."""


class ModelState(enum.Enum):
    """Where a model version stands; the names are the proto's ``MODEL_STATE_*``."""

    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"


@dataclass
class ServedVersion:
    """One version of a served model.

    Attributes:
        name: the model's name.
        version: the version number.
        state: its state.
        model: the loaded model, once AVAILABLE.
        error: why it FAILED; for an AVAILABLE version, why loading its
            changed files failed (it serves what it had).
        fingerprint: the files it was loaded (or failed to load) from.
        rejected_fingerprint: changed files of an AVAILABLE version that
            failed to load, not retried until they change again.
        precisions: the precisions requests may ask for; ``None``: all.
        in_flight: calls computing on it now.
    """

    name: str
    version: int
    state: ModelState
    model: Model | None = None
    error: str | None = None
    fingerprint: object = None
    rejected_fingerprint: object = None
    precisions: tuple[str, ...] | None = None
    in_flight: int = 0

    @property
    def label(self) -> str:
        """The version as requests and replies name it, e.g. ``"2"``."""
        return str(self.version)

    def check_precision(self, precision: str | None) -> None:
        """Refuse a precision this version does not allow.

        Raises:
            PrecisionError: ``precision`` is not among ``precisions``.
        """
        if self.precisions is not None and (precision or "float32") not in self.precisions:
            raise PrecisionError(
                f"model {self.name!r} allows precision {list(self.precisions)} only, "
                f"not {precision!r}",
                field="precision",
            )


@dataclass
class _Entry:
    fixed: bool
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    error: str | None = None
    layout_errors: tuple[str, ...] = ()
    ever_available: bool = False


class ModelRegistry:
    """The served models and versions; thread-safe.

    Args:
        metrics: where version states are reported.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._ready = False
        self._revision = 0

    @property
    def revision(self) -> int:
        """A count that grows whenever a version becomes AVAILABLE, fails or is unloaded."""
        with self._lock:
            return self._revision

    @property
    def names(self) -> list[str]:
        """The known model names, sorted."""
        with self._lock:
            return sorted(self._entries)

    def mark_ready(self) -> None:
        """The start-up load is over: from now on lookups answer instead of UNAVAILABLE."""
        with self._lock:
            self._ready = True

    def add_model(self, name: str, *, fixed: bool) -> None:
        """Know model ``name`` (no versions yet); ``fixed`` for a ``--model`` model."""
        with self._lock:
            self._entries.setdefault(name, _Entry(fixed=fixed))

    def is_fixed(self, name: str) -> bool:
        """Whether ``name`` is a ``--model`` model, which never reloads."""
        with self._lock:
            entry = self._entries.get(name)
            return entry is not None and entry.fixed

    def remove_model(self, name: str) -> None:
        """Forget model ``name``; its versions must have been unloaded."""
        with self._lock:
            self._entries.pop(name, None)

    def set_folder_problems(
        self, name: str, *, error: str | None, layout_errors: tuple[str, ...]
    ) -> None:
        """Record model ``name``'s folder problems: ``error`` makes the folder as a
        whole unusable (``None``: none); ``layout_errors`` are model files not laid
        out as a repository needs."""
        with self._lock:
            entry = self._entries[name]
            entry.error = error
            entry.layout_errors = layout_errors

    def any_available(self) -> bool:
        """Whether some version of some model is AVAILABLE."""
        with self._lock:
            return any(
                served.state is ModelState.AVAILABLE
                for entry in self._entries.values()
                for served in entry.versions.values()
            )

    def available_models(self) -> list[str]:
        """The models with an AVAILABLE version, sorted."""
        with self._lock:
            return [
                name
                for name, entry in sorted(self._entries.items())
                if any(v.state is ModelState.AVAILABLE for v in entry.versions.values())
            ]

    def versions(self, name: str) -> dict[int, ServedVersion]:
        """Model ``name``'s versions by number (a copy of the mapping)."""
        with self._lock:
            entry = self._entries.get(name)
            return {} if entry is None else dict(entry.versions)

    def set_loading(self, name: str, version: int, fingerprint: object) -> None:
        """Version ``version`` of ``name`` starts loading."""
        with self._lock:
            self._entries[name].versions[version] = ServedVersion(
                name, version, ModelState.LOADING, fingerprint=fingerprint
            )
        self._metrics.set_model_state(name, str(version), ModelState.LOADING.value)

    def set_available(
        self,
        name: str,
        version: int,
        model: Model,
        *,
        fingerprint: object = None,
        precisions: tuple[str, ...] | None = None,
    ) -> None:
        """Version ``version`` of ``name`` is loaded and warm: it answers from now on."""
        with self._lock:
            entry = self._entries[name]
            entry.versions[version] = ServedVersion(
                name,
                version,
                ModelState.AVAILABLE,
                model=model,
                fingerprint=fingerprint,
                precisions=precisions,
            )
            entry.ever_available = True
            self._revision += 1
        self._metrics.set_model_state(name, str(version), ModelState.AVAILABLE.value)

    def set_reload_failed(self, name: str, version: int, error: str, fingerprint: object) -> None:
        """Loading the changed files ``fingerprint`` of AVAILABLE version ``version``
        of ``name`` failed, for ``error``: it keeps serving what it had."""
        with self._lock:
            served = self._entries[name].versions[version]
            served.error = error
            served.rejected_fingerprint = fingerprint

    def set_failed(self, name: str, version: int, error: str, fingerprint: object) -> None:
        """Version ``version`` of ``name`` could not be loaded or warmed, for ``error``."""
        with self._lock:
            self._entries[name].versions[version] = ServedVersion(
                name, version, ModelState.FAILED, error=error, fingerprint=fingerprint
            )
            self._revision += 1
        self._metrics.set_model_state(name, str(version), ModelState.FAILED.value)

    def drain(self, name: str, version: int) -> None:
        """Take a version out of service, wait for its calls to finish, and forget it.

        From the call on, no new request gets this version (UNLOADING); this
        returns once the calls already holding it are done. Blocks: call it
        from a loading thread, never from the event loop.
        """
        with self._lock:
            served = self._entries[name].versions.get(version)
            if served is None:
                return
            served.state = ModelState.UNLOADING
            self._metrics.set_model_state(name, str(version), ModelState.UNLOADING.value)
            self._lock.wait_for(lambda: served.in_flight == 0)
            del self._entries[name].versions[version]
            served.model = None
            self._revision += 1
        self._metrics.set_model_state(name, str(version), None)

    def forget(self, name: str, version: int) -> None:
        """Drop a FAILED version's record."""
        with self._lock:
            self._entries[name].versions.pop(version, None)
        self._metrics.set_model_state(name, str(version), None)

    @contextlib.contextmanager
    def acquired(self, name: str, version: str = "") -> Iterator[ServedVersion]:
        """Hold the version of ``name`` that a request for ``version`` gets, for a call.

        ``version`` ``""`` means the newest AVAILABLE version. While held, the
        version is not unloaded.

        Raises:
            InvalidArgumentError: ``version`` is not a version number as
                folders name them (``"01"``, ``"v1"``).
            ModelNotFoundError: no such model, or the version is not
                AVAILABLE (the message says its state).
            UnavailableError: the server is still loading its models.
        """
        with self._lock:
            served = self._lookup(name, version)
            served.in_flight += 1
        try:
            yield served
        finally:
            with self._lock:
                served.in_flight -= 1
                if served.in_flight == 0:
                    self._lock.notify_all()

    def get(self, name: str, version: str = "") -> Model:
        """The model that a request for ``name`` at ``version`` would compute with.

        Raises:
            InvalidArgumentError, ModelNotFoundError, UnavailableError: as :meth:`acquired`.
        """
        with self.acquired(name, version) as served:
            assert served.model is not None
            return served.model

    def describe(self, name: str) -> ModelStatus:
        """Model ``name``'s versions and their states.

        Raises:
            ModelNotFoundError: no such model.
        """
        with self._lock:
            return self._status(name, self._entry(name))

    def statuses(self) -> list[ModelStatus]:
        """Every model's versions and their states, sorted by model name."""
        with self._lock:
            return [self._status(name, self._entries[name]) for name in sorted(self._entries)]

    def missing_models(self) -> list[str]:
        """Models that should be served but have no AVAILABLE version: ``--model``
        models, and repository models that have been AVAILABLE before."""
        with self._lock:
            return [
                name
                for name, entry in sorted(self._entries.items())
                if (entry.fixed or entry.ever_available)
                and not any(v.state is ModelState.AVAILABLE for v in entry.versions.values())
            ]

    def evictions(self, name: str) -> int:
        """Compiled functions evicted so far from the caches of the loaded versions of ``name``."""
        with self._lock:
            entry = self._entries.get(name)
            models = [] if entry is None else [v.model for v in entry.versions.values() if v.model]
        return sum(model.functions.evictions for model in models)

    def compile_count(self, name: str) -> int:
        """Functions compiled so far for the loaded versions of model ``name``."""
        with self._lock:
            entry = self._entries.get(name)
            models = [] if entry is None else [v.model for v in entry.versions.values() if v.model]
        return sum(model.metadata().compile_count for model in models)

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(
                f"no model named {clipped(name)} is served; served models: {sorted(self._entries)}",
                field="model_name",
                metadata={"served_models": ",".join(sorted(self._entries))},
            )
        return entry

    def _lookup(self, name: str, version: str) -> ServedVersion:
        if not self._ready:
            raise UnavailableError(
                f"model {clipped(name)} is still loading; retry once health reports SERVING",
                reason="MODELS_LOADING",
            )
        entry = self._entry(name)
        available = sorted(
            number for number, v in entry.versions.items() if v.state is ModelState.AVAILABLE
        )
        if version == "":
            if not available:
                raise ModelNotFoundError(
                    f"model {name!r} has no AVAILABLE version; {self._states_text(entry)}",
                    field="model_name",
                    reason="MODEL_VERSION_NOT_AVAILABLE",
                )
            return entry.versions[available[-1]]
        if not VERSION_NAME.fullmatch(version):
            raise InvalidArgumentError(
                f"model_version {clipped(version)} is not a version number: name a version as "
                "its folder is named, a positive decimal integer without leading zeros or "
                "signs (e.g. '1', not '01'), or leave it empty for the newest",
                field="model_version",
                reason="MODEL_VERSION_INVALID",
            )
        served = entry.versions.get(int(version))
        if served is None or served.state is not ModelState.AVAILABLE:
            state = "is not served" if served is None else f"is {served.state.value}"
            if served is not None and served.error:
                state += f" ({served.error})"
            raise ModelNotFoundError(
                f"version {clipped(version)} of model {name!r} {state}; AVAILABLE versions: "
                f"{[str(number) for number in available]} (or leave model_version empty for "
                "the newest)",
                field="model_version",
                reason="MODEL_VERSION_NOT_FOUND",
                metadata={"available_versions": ",".join(str(number) for number in available)},
            )
        return served

    @staticmethod
    def _states_text(entry: _Entry) -> str:
        if not entry.versions:
            problems = [entry.error] if entry.error else list(entry.layout_errors)
            found = f" ({'; '.join(problems)})" if problems else ""
            return f"it has no versions{found}; a repository model is laid out as {EXPECTED_LAYOUT}"
        return ", ".join(
            f"version {number} is {v.state.value}" for number, v in sorted(entry.versions.items())
        )

    @staticmethod
    def _status(name: str, entry: _Entry) -> ModelStatus:
        return ModelStatus(
            name=name,
            versions=tuple(
                VersionStatus(str(number), v.state.value, v.error)
                for number, v in sorted(entry.versions.items())
            ),
            error=entry.error,
            layout_errors=entry.layout_errors,
        )
