"""Confinement of the model repository's files: nothing outside it is read, and only
regular files are opened.

A path is *inside* when, with every symlink followed, it lies within the
repository; symlinks that stay inside are allowed. A small file (a model's
``config.toml``) is read by :func:`read_small_file`: refused unless inside, opened
without following a final symlink (``O_NOFOLLOW``) and without blocking on a FIFO
(``O_NONBLOCK``), checked with ``fstat`` to be a regular file, and read up to a
size cap. Its refusals say what is wrong, never what the file holds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def inside(path: Path, real_root: Path) -> bool:
    """Whether ``path``, with every symlink followed, lies within ``real_root``
    (a resolved path)."""
    return path.resolve().is_relative_to(real_root)


def read_small_file(path: Path, real_root: Path, max_bytes: int) -> bytes | None:
    """The bytes of ``path``, a regular file of at most ``max_bytes`` inside
    ``real_root``; ``None`` when there is no such file.

    Raises:
        ValueError: ``path`` leads outside the repository, is not a regular file
            (a FIFO, socket, device or folder), is larger than ``max_bytes``, or
            cannot be read; the message names the file by its name only.
    """
    if not os.path.lexists(path):
        return None
    if not inside(path, real_root):
        raise ValueError(f"{path.name} leads outside the repository; symlinks must stay inside it")
    try:
        descriptor = os.open(
            path.resolve(), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        )
    except FileNotFoundError:
        return None  # removed meanwhile; the next scan sees the result
    except OSError as error:
        raise ValueError(f"cannot open {path.name}: {error.strerror}") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(
                f"{path.name} is not a regular file (a FIFO, socket, device or folder); "
                "make it a plain text file"
            )
        if status.st_size > max_bytes:
            raise ValueError(
                f"{path.name} holds {status.st_size:,} bytes, more than the {max_bytes:,} allowed"
            )
        content = _read_at_most(descriptor, max_bytes + 1)
    except OSError as error:
        raise ValueError(f"cannot read {path.name}: {error.strerror}") from None
    finally:
        os.close(descriptor)
    if len(content) > max_bytes:  # grew after fstat
        raise ValueError(f"{path.name} holds more than the {max_bytes:,} bytes allowed")
    return content


def _read_at_most(descriptor: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(descriptor, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
