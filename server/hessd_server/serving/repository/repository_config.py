"""A repository model's optional ``config.toml``: engine options, warm-up, precisions
and version policy.

Every key is optional; a missing file means all defaults::

    max_batch_size = 64              # largest batch bucket, a power of two
    max_result_bytes = 268435456     # refuse results larger than this
    jit_compile = true               # compile with XLA
    strategy = "structural"          # pin the per-example Hessian strategy ("auto": record or rule)
    warmup_batch_sizes = [1, 8]      # instead of the server's --warmup-batch-sizes
    warmup_methods = ["hessian", "hessian_trace"]  # instead of --warmup-methods
    warmup_precisions = ["float64"]  # instead of --warmup-precisions
    precisions = ["float32"]         # the precisions requests may ask for

    [version_policy]                 # exactly one of:
    latest = 2                       #   the 2 newest versions (default: latest = 1)
    # all = true                     #   every version
    # specific = [1, 3]              #   these versions

An unknown key or a value of the wrong type is an error that names it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...engine.config import (
    DEFAULT_WARMUP_METHODS,
    DEFAULT_WARMUP_PRECISIONS,
    STRATEGY_NAMES,
    EngineConfig,
    check_warmup_plan,
)
from ...engine.model import PRECISIONS
from ..server_config import AUTO_STRATEGY
from .repository_files import read_small_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE_NAME = "config.toml"
"""The name of a model's configuration file, beside its version folders."""

CONFIG_MAX_BYTES = 65_536
"""The largest ``config.toml`` read, in bytes."""

POLICY_KINDS = ("latest", "all", "specific")


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served.

    Attributes:
        kind: ``"latest"`` (the ``count`` newest), ``"all"``, or ``"specific"``
            (those in ``versions``).
        count: how many versions ``"latest"`` serves.
        versions: the versions ``"specific"`` serves.
    """

    kind: str = "latest"
    count: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, versions: Iterable[int]) -> set[int]:
        """The versions of ``versions`` this policy serves.

        >>> sorted(VersionPolicy("latest", 2).select([1, 2, 3]))
        [2, 3]
        """
        newest_first = sorted(set(versions), reverse=True)
        if self.kind == "all":
            return set(newest_first)
        if self.kind == "latest":
            return set(newest_first[: self.count])
        return set(newest_first) & self.versions

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest({self.count})"
        if self.kind == "specific":
            return f"specific({sorted(self.versions)})"
        return "all"


@dataclass(frozen=True)
class ModelConfig:
    """One repository model's settings; ``None`` fields take the server's.

    Attributes:
        version_policy: which versions are served.
        max_batch_size: the largest batch bucket.
        max_result_bytes: results above this are refused.
        jit_compile: compile with XLA.
        strategy: the per-example Hessian strategy, or ``"auto"`` for the tuning record or the rule.
        warmup_batch_sizes: batch sizes warmed before a version serves.
        warmup_methods: methods warmed before a version serves (names of
            ``hessd_server.engine.config.WARMUP_METHODS``).
        warmup_precisions: precisions they are warmed at.
        precisions: the precisions requests may ask for (``None``: all).
    """

    version_policy: VersionPolicy = VersionPolicy()
    max_batch_size: int | None = None
    max_result_bytes: int | None = None
    jit_compile: bool | None = None
    strategy: str | None = None
    warmup_batch_sizes: tuple[int, ...] | None = None
    warmup_methods: tuple[str, ...] | None = None
    warmup_precisions: tuple[str, ...] | None = None
    precisions: tuple[str, ...] | None = None

    def warmup_plan(
        self,
        batch_sizes: Sequence[int] | None,
        methods: Sequence[str],
        precisions: Sequence[str],
    ) -> tuple[Sequence[int] | None, tuple[str, ...], tuple[str, ...]]:
        """(batch sizes, methods, precisions) to warm a version at: this model's, or the
        server's given here; of the precisions, the ones its requests may ask for
        (the first it allows when none is left)."""
        sizes = batch_sizes if self.warmup_batch_sizes is None else self.warmup_batch_sizes
        wanted = tuple(self.warmup_precisions or precisions)
        if self.precisions is not None:
            wanted = tuple(p for p in wanted if p in self.precisions) or self.precisions[:1]
        return sizes, tuple(self.warmup_methods or methods), wanted

    def engine_config(self, server: EngineConfig) -> EngineConfig:
        """The server's engine settings with this model's overrides."""
        overrides = {
            name: getattr(self, name)
            for name in ("max_batch_size", "max_result_bytes", "jit_compile")
            if getattr(self, name) is not None
        }
        if self.strategy is not None:
            overrides["strategy"] = None if self.strategy == AUTO_STRATEGY else self.strategy
        return dataclasses.replace(server, **overrides)


def read_model_config(path: Path, real_root: Path) -> ModelConfig:
    """The configuration in ``path``, or the defaults when there is no such file.

    The file is confined to the repository ``real_root`` (a resolved path) as
    :func:`~.repository_files.read_small_file` says, and holds at most
    :data:`CONFIG_MAX_BYTES`.

    Raises:
        ValueError: the file leads outside the repository, is not a regular
            file, is too large, cannot be read or parsed, or holds an unknown
            key or a bad value; the message names the file and the key.
    """
    content = read_small_file(path, real_root, CONFIG_MAX_BYTES)
    if content is None:
        return ModelConfig()
    try:
        table = tomllib.loads(content.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path.name}: it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"cannot read {path.name}: {error}") from None
    try:
        return parse_model_config(table)
    except ValueError as error:
        raise ValueError(f"{path.name}: {error}") from error


def parse_model_config(table: Mapping[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` from a parsed ``config.toml`` table.

    Raises:
        ValueError: an unknown key or a bad value, named in the message.

    >>> parse_model_config({"version_policy": {"specific": [1, 3]}}).version_policy.versions
    frozenset({1, 3})
    """
    known = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; known keys: {sorted(known)}")
    settings: dict[str, Any] = {}
    for key in ("max_batch_size", "max_result_bytes"):
        if key in table:
            settings[key] = _positive_int(table[key], key)
    if "jit_compile" in table:
        if not isinstance(table["jit_compile"], bool):
            raise ValueError(f"jit_compile must be true or false, got {table['jit_compile']!r}")
        settings["jit_compile"] = table["jit_compile"]
    if "strategy" in table:
        choices = (AUTO_STRATEGY, *STRATEGY_NAMES)
        if table["strategy"] not in choices:
            raise ValueError(f"strategy must be one of {list(choices)}, got {table['strategy']!r}")
        settings["strategy"] = table["strategy"]
    if "warmup_batch_sizes" in table:
        settings["warmup_batch_sizes"] = tuple(
            _positive_int(size, "warmup_batch_sizes")
            for size in _list(table["warmup_batch_sizes"], "warmup_batch_sizes")
        )
    for key in ("warmup_methods", "warmup_precisions"):
        if key in table:
            settings[key] = tuple(_list(table[key], key))
    if "warmup_methods" in settings or "warmup_precisions" in settings:
        try:
            check_warmup_plan(
                settings.get("warmup_methods", DEFAULT_WARMUP_METHODS),
                settings.get("warmup_precisions", DEFAULT_WARMUP_PRECISIONS),
            )
        except ValueError as error:
            raise ValueError(f"warmup_methods or warmup_precisions: {error}") from None
    if "precisions" in table:
        precisions = _list(table["precisions"], "precisions")
        if not precisions or any(precision not in PRECISIONS for precision in precisions):
            raise ValueError(f"precisions must be a non-empty list of {PRECISIONS}, got {precisions!r}")
        settings["precisions"] = tuple(precisions)
    if "version_policy" in table:
        settings["version_policy"] = _version_policy(table["version_policy"])
    config = ModelConfig(**settings)
    config.engine_config(EngineConfig())
    return config


def _version_policy(table: Any) -> VersionPolicy:
    if not isinstance(table, Mapping) or len(table) != 1 or next(iter(table)) not in POLICY_KINDS:
        raise ValueError(
            "version_policy must be a table with exactly one of latest = N, all = true, "
            f"specific = [versions], got {table!r}"
        )
    kind, value = next(iter(table.items()))
    if kind == "latest":
        return VersionPolicy("latest", count=_positive_int(value, "version_policy.latest"))
    if kind == "all":
        if value is not True:
            raise ValueError(f"version_policy.all must be true, got {value!r}")
        return VersionPolicy("all")
    versions = _list(value, "version_policy.specific")
    if not versions:
        raise ValueError("version_policy.specific must name at least one version")
    return VersionPolicy(
        "specific",
        versions=frozenset(_positive_int(v, "version_policy.specific") for v in versions),
    )


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{key} must be a list, got {value!r}")
    return value
