"""The model repository on disk: a folder per model, a folder per integer version.

::

    repository/
      price/
        config.toml            # optional, see repository_config
        1/model.keras          # a .keras file ...
        2/saved_model.pb       # ... or a SavedModel (model.export(dir)), with variables/
          2/variables/...

:func:`scan` reads what is there, without loading anything. Everything it
returns lies inside the repository: a model or version folder, or any file in
a version folder, that leads outside it (through a symlink) is refused with an
error, and names that are not plain folder names are never looked up.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .repository_config import CONFIG_FILE_NAME, ModelConfig, read_model_config

_log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A model folder's name: letters, digits, ``_``, ``.`` and ``-``, not starting with a dot."""

VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")
"""A version folder's name: a positive decimal integer without leading zeros."""

SAVED_MODEL_FILE = "saved_model.pb"

Fingerprint = tuple[tuple[str, int, int], ...]
"""(relative path, size, modification time in ns) of every file, sorted."""


@dataclass(frozen=True)
class VersionFolder:
    """One version folder of a model.

    Attributes:
        version: the folder's integer name.
        source: what to load: the ``.keras`` file or the SavedModel folder;
            ``None`` when ``error`` says why there is nothing to load.
        fingerprint: the folder's files (and the model's config.toml), so
            that a change to any of them is noticed.
        error: why the folder cannot be loaded, or ``None``.
    """

    version: int
    source: Path | None
    fingerprint: Fingerprint
    error: str | None = None


@dataclass(frozen=True)
class ModelFolder:
    """One model folder.

    Attributes:
        name: the folder's name, which is the model's name.
        config: its config.toml settings (defaults when absent or broken).
        error: why the folder as a whole is unusable (a broken config.toml,
            a folder leading outside the repository), or ``None``.
        versions: its non-empty version folders by version.
    """

    name: str
    config: ModelConfig = ModelConfig()
    error: str | None = None
    versions: dict[int, VersionFolder] = field(default_factory=dict)


def is_model_name(name: str) -> bool:
    """Whether ``name`` can name a model folder (no separators, no ``..``, not absolute)."""
    return MODEL_NAME.fullmatch(name) is not None and ".." not in name


def scan(root: Path) -> dict[str, ModelFolder]:
    """The model folders of repository ``root`` by name.

    Entries whose names are not model names (hidden files, stray files) are
    skipped, as are empty version folders (a version being created).

    Raises:
        OSError: ``root`` cannot be listed.
    """
    real_root = root.resolve(strict=True)
    models: dict[str, ModelFolder] = {}
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or not is_model_name(entry.name):
            continue
        models[entry.name] = _model_folder(entry, real_root)
    return models


def scan_model(root: Path, name: str) -> ModelFolder | None:
    """Model folder ``name`` of repository ``root``, or ``None`` if there is none.

    Raises:
        ValueError: ``name`` is not a model name (it could lead elsewhere).
    """
    if not is_model_name(name):
        raise ValueError(
            f"{name[:64]!r} is not a model name: use a folder name of the repository "
            "(letters, digits, '_', '.', '-'; no path separators or '..')"
        )
    folder = root / name
    if not folder.is_dir():
        return None
    return _model_folder(folder, root.resolve(strict=True))


def _model_folder(folder: Path, real_root: Path) -> ModelFolder:
    if not _inside(folder, real_root):
        return ModelFolder(folder.name, error="the model folder leads outside the repository")
    try:
        config = read_model_config(folder / CONFIG_FILE_NAME)
    except ValueError as error:
        return ModelFolder(folder.name, error=str(error))
    config_stamp = _config_stamp(folder / CONFIG_FILE_NAME)
    versions = {}
    for entry in folder.iterdir():
        if entry.is_dir() and VERSION_NAME.fullmatch(entry.name):
            version = _version_folder(entry, real_root, config_stamp)
            if version is not None:
                versions[version.version] = version
    return ModelFolder(folder.name, config, None, versions)


def _version_folder(
    folder: Path, real_root: Path, config_stamp: Fingerprint
) -> VersionFolder | None:
    version = int(folder.name)
    if not _inside(folder, real_root):
        return VersionFolder(version, None, (), "the version folder leads outside the repository")
    files, escaping = _files(folder, real_root)
    if escaping:
        return VersionFolder(
            version,
            None,
            (),
            f"{escaping} leads outside the repository; symlinks must stay inside it",
        )
    if not files:
        return None
    fingerprint = tuple(sorted(files)) + config_stamp
    if (folder / SAVED_MODEL_FILE).is_file():
        return VersionFolder(version, folder, fingerprint)
    keras_files = sorted(path for path, _, _ in files if path.endswith(".keras") and "/" not in path)
    if len(keras_files) == 1:
        return VersionFolder(version, folder / keras_files[0], fingerprint)
    problem = (
        f"holds {len(keras_files)} .keras files {keras_files}; keep one"
        if keras_files
        else f"holds neither a .keras file nor a SavedModel ({SAVED_MODEL_FILE})"
    )
    return VersionFolder(version, None, fingerprint, f"version folder {folder.name} {problem}")


def _files(folder: Path, real_root: Path) -> tuple[list[tuple[str, int, int]], str | None]:
    """Every file under ``folder`` as (relative path, size, mtime), and the first
    entry that leads outside the repository, if any."""
    files = []
    visited = {folder.resolve()}
    for directory, subdirectories, names in os.walk(folder, followlinks=True):
        base = Path(directory)
        for name in (*subdirectories, *names):
            path = base / name
            if not _inside(path, real_root):
                return [], str(path.relative_to(folder.parent.parent))
        unseen = [name for name in subdirectories if (base / name).resolve() not in visited]
        visited.update((base / name).resolve() for name in unseen)
        subdirectories[:] = unseen  # a symlink back up the tree is walked once
        for name in names:
            path = base / name
            try:
                stat = path.stat()
            except OSError:
                continue  # removed while scanning; the next scan sees the result
            files.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return files, None


def _config_stamp(path: Path) -> Fingerprint:
    try:
        stat = path.stat()
    except OSError:
        return ()
    return ((CONFIG_FILE_NAME, stat.st_size, stat.st_mtime_ns),)


def _inside(path: Path, real_root: Path) -> bool:
    """Whether ``path``, with every symlink followed, lies within ``real_root``."""
    return path.resolve().is_relative_to(real_root)
