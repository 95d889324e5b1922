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
error, as is a version file that is not a regular file (a FIFO, a device); names
that are not plain folder names are never looked up. Model files that are not
laid out as above (``flat.keras`` in the repository itself, ``price/model.keras``
without a version folder, ``price/v1/`` or ``price/01/``) are reported as
*layout errors* of the model they would belong to, each naming the expected layout.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .repository_config import CONFIG_FILE_NAME, ModelConfig, VersionPolicy, read_model_config
from .repository_files import inside

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A model folder's name: letters, digits, ``_``, ``.`` and ``-``, not starting with a dot."""

VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")
"""A version folder's name: a positive decimal integer without leading zeros."""

SAVED_MODEL_FILE = "saved_model.pb"
KERAS_SUFFIX = ".keras"

EXPECTED_LAYOUT = (
    "NAME/VERSION/model.keras or a SavedModel in NAME/VERSION/ (saved_model.pb and "
    "variables/), VERSION a positive integer without leading zeros"
)
"""The repository's layout, as layout errors and lookups of version-less models state it."""

FileStamp = tuple[str, int, int, int, int]
"""(relative path, size, modification time in ns, status-change time in ns, inode) of one
file: a rewrite changes the size or a time, a replacement (rename over it) the inode."""


@dataclass(frozen=True)
class Fingerprint:
    """What a version is loaded from; a version whose fingerprint changes is loaded anew.

    Attributes:
        files: the stamp of every file in the version folder, sorted.
        settings: its model's config.toml settings, the version policy left out
            (which versions are served does not change what one computes).
    """

    files: tuple[FileStamp, ...]
    settings: ModelConfig


@dataclass(frozen=True)
class VersionFolder:
    """One version folder of a model.

    Attributes:
        version: the folder's integer name.
        source: what to load: the ``.keras`` file or the SavedModel folder;
            ``None`` when ``error`` says why there is nothing to load.
        fingerprint: the folder's files and the model's settings, so that a
            change to any of them is noticed (no files when the folder is not
            confined to the repository).
        error: why the folder cannot be loaded, or ``None``.
    """

    version: int
    source: Path | None
    fingerprint: Fingerprint
    error: str | None = None


@dataclass(frozen=True)
class ModelFolder:
    """One model folder (or a model file misplaced in the repository itself).

    Attributes:
        name: the folder's name, which is the model's name.
        config: its config.toml settings (defaults when absent or broken).
        error: why the folder as a whole is unusable (a broken config.toml,
            a folder leading outside the repository), or ``None``.
        versions: its non-empty version folders by version.
        layout_errors: model files or folders that are not laid out as
            :data:`EXPECTED_LAYOUT`, each with what to do about it.
        config_stamp: config.toml's stamp, ``None`` without one; tells an
            edited config.toml from an unchanged one.
    """

    name: str
    config: ModelConfig = ModelConfig()
    error: str | None = None
    versions: dict[int, VersionFolder] = field(default_factory=dict)
    layout_errors: tuple[str, ...] = ()
    config_stamp: FileStamp | None = None


def is_model_name(name: str) -> bool:
    """Whether ``name`` can name a model folder (no separators, no ``..``, not absolute)."""
    return MODEL_NAME.fullmatch(name) is not None and ".." not in name


def scan(root: Path) -> dict[str, ModelFolder]:
    """The model folders of repository ``root`` by name.

    Hidden entries (a version being staged) and files that are no model are
    skipped, as are empty version folders (a version being created). A model
    file in ``root`` itself is returned as a model of its file name with a
    layout error and no versions.

    Raises:
        OSError: ``root`` cannot be listed.
    """
    real_root = root.resolve(strict=True)
    models: dict[str, ModelFolder] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if is_model_name(entry.name):
                models[entry.name] = _model_folder(entry, real_root)
        elif _is_model_file(entry):
            models[entry.name] = ModelFolder(
                entry.name,
                layout_errors=(
                    f"{entry.name} lies in the repository itself; a model is laid out as "
                    f"{EXPECTED_LAYOUT}: move it to {_stem(entry.name)}/1/{entry.name}",
                ),
            )
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
    if not inside(folder, real_root):
        return ModelFolder(folder.name, error="the model folder leads outside the repository")
    config_path = folder / CONFIG_FILE_NAME
    config_stamp = _stamp(config_path, CONFIG_FILE_NAME)
    try:
        config = read_model_config(config_path, real_root)
    except ValueError as error:
        return ModelFolder(folder.name, error=str(error), config_stamp=config_stamp)
    settings = dataclasses.replace(config, version_policy=VersionPolicy())
    versions = {}
    layout_errors = []
    for entry in sorted(folder.iterdir()):
        where = f"{folder.name}/{entry.name}"
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and VERSION_NAME.fullmatch(entry.name):
            version = _version_folder(entry, real_root, settings)
            if version is not None:
                versions[version.version] = version
        elif entry.is_dir():
            if inside(entry, real_root) and _holds_model_file(entry):
                layout_errors.append(
                    f"{where} is not a version folder; a model is laid out as "
                    f"{EXPECTED_LAYOUT}: rename it to {folder.name}/1 (or the next free version)"
                )
        elif _is_model_file(entry):
            layout_errors.append(
                f"{where} lies directly in the model folder; a model is laid out as "
                f"{EXPECTED_LAYOUT}: move it to {folder.name}/1/{entry.name}"
            )
    return ModelFolder(
        folder.name, config, None, versions, tuple(layout_errors), config_stamp
    )


def _version_folder(folder: Path, real_root: Path, settings: ModelConfig) -> VersionFolder | None:
    version = int(folder.name)
    if not inside(folder, real_root):
        problem = "the version folder leads outside the repository"
        return VersionFolder(version, None, Fingerprint((), settings), problem)
    files, problem = _files(folder, real_root)
    if problem is not None:
        return VersionFolder(version, None, Fingerprint((), settings), problem)
    if not files:
        return None
    fingerprint = Fingerprint(tuple(sorted(files)), settings)
    if (folder / SAVED_MODEL_FILE).is_file():
        return VersionFolder(version, folder, fingerprint)
    paths = [stamp[0] for stamp in files]
    keras_files = sorted(path for path in paths if path.endswith(KERAS_SUFFIX) and "/" not in path)
    if len(keras_files) == 1:
        return VersionFolder(version, folder / keras_files[0], fingerprint)
    if keras_files:
        problem = f"holds {len(keras_files)} .keras files {keras_files}; keep one"
    else:
        problem = f"holds neither a .keras file nor a SavedModel ({SAVED_MODEL_FILE})"
        nested = sorted(path for path in paths if "/" in path and _is_model_file(Path(path)))
        if nested:
            problem += (
                f"; {nested[0]} lies in a sub-folder, which is not loaded: a model is laid out "
                f"as {EXPECTED_LAYOUT}, so move its files up into "
                f"{folder.parent.name}/{version}/"
            )
    return VersionFolder(version, None, fingerprint, f"version folder {folder.name} {problem}")


def _files(folder: Path, real_root: Path) -> tuple[list[FileStamp], str | None]:
    """The stamp of every file under ``folder``, or why the folder cannot be
    loaded: an entry leads outside the repository or is not a regular file."""
    files = []
    visited = {folder.resolve()}
    for directory, subdirectories, names in os.walk(folder, followlinks=True):
        base = Path(directory)
        for name in (*subdirectories, *names):
            path = base / name
            if not inside(path, real_root):
                where = path.relative_to(folder.parent.parent)
                return [], f"{where} leads outside the repository; symlinks must stay inside it"
        unseen = [name for name in subdirectories if (base / name).resolve() not in visited]
        visited.update((base / name).resolve() for name in unseen)
        subdirectories[:] = unseen  # a symlink back up the tree is walked once
        for name in names:
            path = base / name
            try:
                status = path.stat()
            except OSError:
                continue  # removed while scanning; the next scan sees the result
            if not stat.S_ISREG(status.st_mode):
                where = path.relative_to(folder.parent.parent)
                return [], f"{where} is not a regular file (a FIFO, socket or device); remove it"
            files.append(_stamp_of(path.relative_to(folder).as_posix(), status))
    return files, None


def _stamp(path: Path, name: str) -> FileStamp | None:
    """The stamp of ``path`` (symlinks followed) under ``name``; ``None`` if it is missing."""
    try:
        return _stamp_of(name, path.stat())
    except OSError:
        return None


def _stamp_of(name: str, status: os.stat_result) -> FileStamp:
    return (name, status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)


def _holds_model_file(folder: Path) -> bool:
    """Whether ``folder`` holds a model file directly (``False`` if it cannot be listed)."""
    try:
        return any(map(_is_model_file, folder.iterdir()))
    except OSError:
        return False


def _is_model_file(path: Path) -> bool:
    """Whether ``path`` is named as a model file is (``*.keras``, ``saved_model.pb``)."""
    return path.name.endswith(KERAS_SUFFIX) or path.name == SAVED_MODEL_FILE


def _stem(name: str) -> str:
    stem = name.removesuffix(KERAS_SUFFIX)
    return "NAME" if name == SAVED_MODEL_FILE or not is_model_name(stem) else stem
