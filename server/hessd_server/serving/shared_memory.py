"""Callers' POSIX shared-memory regions, mapped by the server while they are registered.

A region is registered by name, size and access key (see
``proto/hessd/v1/shared_memory.proto``). Every use names the region and
repeats the key, and is checked against the registered size before any byte
is touched: a request can read or write only inside a region it holds the key
of. A region stays mapped while calls borrow it, even when it is unregistered
meanwhile; the last borrower unmaps it.

>>> regions = SharedMemoryRegistry(max_region_bytes=1 << 20, max_regions=4)
>>> regions.register("no-such-region", 64, b"k" * 16)
Traceback (most recent call last):
...
hessd.errors.SharedMemoryNotFoundError: no shared-memory region 'no-such-region' exists on the server's host; create it (e.g. multiprocessing.shared_memory) on this host before registering it.
"""

from __future__ import annotations

import contextlib
import hmac
import mmap
import os
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hessd import tensor_codec
from hessd.errors import (
    InvalidSharedMemoryError,
    SharedMemoryError,
    SharedMemoryExistsError,
    SharedMemoryNotFoundError,
    SharedMemoryPermissionError,
    TensorEncodingError,
)
from hessd.v1.tensor_pb2 import Tensor

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
"""Region names (after an optional leading "/"); "." and ".." are refused too."""

KEY_BYTES = (16, 64)
"""Smallest and largest access key, in bytes."""

SHARED_MEMORY_DIR = "/dev/shm"
"""Where POSIX shared-memory regions live (Linux: shm_open opens files here)."""


@dataclass
class _Region:
    name: str
    key: bytes
    size: int
    memory: mmap.mmap
    buffer: memoryview
    borrowers: int = 0
    unregistered: bool = False


class SharedMemoryRegistry:
    """The registered regions of one server, safe to use from any thread.

    Args:
        max_region_bytes: largest registered size.
        max_regions: most regions registered at once.
    """

    def __init__(self, *, max_region_bytes: int, max_regions: int) -> None:
        self._max_region_bytes = max_region_bytes
        self._max_regions = max_regions
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)
        self._mapped = 0

    @property
    def names(self) -> list[str]:
        """The registered region names, sorted."""
        with self._lock:
            return sorted(self._regions)

    @property
    def mapped(self) -> int:
        """Regions mapped now: registered ones and unregistered ones still borrowed."""
        with self._lock:
            return self._mapped

    def register(self, name: str, size: int, key: bytes) -> str:
        """Map region ``name`` for ``size`` bytes under ``key``; returns the name without "/".

        Raises:
            InvalidSharedMemoryError: a malformed name, a key of the wrong length,
                or a size of 0 or beyond the region or the server's limit.
            SharedMemoryNotFoundError: no region of that name exists on this host.
            SharedMemoryPermissionError: the region does not start with ``key``.
            SharedMemoryExistsError: ``name`` is registered already.
            SharedMemoryError: the server holds ``max_regions`` regions.
        """
        name = _checked_name(name)
        if not KEY_BYTES[0] <= len(key) <= KEY_BYTES[1]:
            raise InvalidSharedMemoryError(
                f"the access key has {len(key)} bytes; use {KEY_BYTES[0]} to {KEY_BYTES[1]} "
                "random bytes (e.g. secrets.token_bytes(32)).",
                field="key",
            )
        if not 0 < size <= self._max_region_bytes:
            raise InvalidSharedMemoryError(
                f"size is {size:,} bytes; register 1 to {self._max_region_bytes:,} bytes.",
                field="size",
            )
        with self._lock:
            if name in self._regions:
                raise SharedMemoryExistsError(
                    f"a region named {name!r} is registered already; unregister it or pick "
                    "another name.",
                    field="name",
                )
            if len(self._regions) >= self._max_regions:
                raise SharedMemoryError(
                    f"the server holds {self._max_regions} shared-memory regions, its limit; "
                    "unregister one first.",
                    field="name",
                )
            memory = _mapped(name, size, key)
            self._regions[name] = _Region(name, bytes(key), size, memory, memoryview(memory))
            self._mapped += 1
        return name

    def unregister(self, name: str, key: bytes) -> None:
        """End the registration of ``name``; it is unmapped once no call borrows it.

        Raises:
            SharedMemoryNotFoundError: no region of that name is registered.
            SharedMemoryPermissionError: ``key`` is not the region's.
        """
        with self._lock:
            region = self._checked(_stripped(name), key)
            self._drop(region)

    def discard(self, name: str) -> None:
        """End the registration of ``name`` if it is registered (its caller is gone)."""
        with self._lock:
            region = self._regions.get(name)
            if region is not None:
                self._drop(region)

    @contextlib.contextmanager
    def borrowed(self, region: str, key: bytes, offset: int, nbytes: int) -> Iterator[memoryview]:
        """Bytes ``offset`` to ``offset + nbytes`` of a registered region, for the block.

        Raises:
            SharedMemoryNotFoundError: no region of that name is registered.
            SharedMemoryPermissionError: ``key`` is not the region's.
            InvalidSharedMemoryError: the bytes do not lie within the registered size.
        """
        with self._lock:
            found = self._checked(_stripped(region), key)
            if offset < 0 or nbytes < 0 or offset + nbytes > found.size:
                raise InvalidSharedMemoryError(
                    f"bytes {offset:,}..{offset + nbytes:,} do not lie within region "
                    f"{found.name!r} of {found.size:,} registered bytes; register a larger "
                    "region or use a smaller offset.",
                    field="shared_memory.offset",
                )
            found.borrowers += 1
            view = found.buffer[offset : offset + nbytes]
        try:
            yield view
        finally:
            view.release()
            with self._lock:
                found.borrowers -= 1
                if found.unregistered and found.borrowers == 0:
                    self._unmap(found)

    def close(self) -> None:
        """End every registration (the server is stopping)."""
        with self._lock:
            for region in list(self._regions.values()):
                self._drop(region)

    def wait_unmapped(self, timeout: float) -> bool:
        """Whether every region is unmapped within ``timeout`` seconds."""
        with self._lock:
            return self._emptied.wait_for(lambda: self._mapped == 0, timeout)

    def _checked(self, name: str, key: bytes) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise SharedMemoryNotFoundError(
                f"no shared-memory region named {name!r} is registered; call "
                "RegisterSharedMemory first.",
                field="shared_memory.region",
            )
        if not hmac.compare_digest(region.key, bytes(key)):
            raise SharedMemoryPermissionError(
                f"the key does not match region {name!r}'s; send the key it was registered with.",
                field="shared_memory.key",
            )
        return region

    def _drop(self, region: _Region) -> None:
        del self._regions[region.name]
        region.unregistered = True
        if region.borrowers == 0:
            self._unmap(region)

    def _unmap(self, region: _Region) -> None:
        region.buffer.release()
        region.memory.close()
        self._mapped -= 1
        self._emptied.notify_all()


def read_tensor(
    regions: SharedMemoryRegistry, tensor: Tensor, *, field: str, max_bytes: int | None = None
) -> np.ndarray:
    """A request's input tensor, read from shared memory when it lies there (then a copy).

    Raises:
        TensorEncodingError: as :func:`hessd.tensor_codec.decode`; also when both
            ``data`` and ``shared_memory`` are set.
        SharedMemoryError: as :meth:`SharedMemoryRegistry.borrowed`.
    """
    if not tensor.HasField("shared_memory"):
        return tensor_codec.decode(tensor, field=field, max_bytes=max_bytes)
    if tensor.data:
        raise TensorEncodingError(
            f"{field} has both data and shared_memory; send its bytes in one of them.", field=field
        )
    location = tensor.shared_memory
    size = tensor_codec.nbytes(tensor.dtype, tensor.shape, field=field, packing=tensor.packing)
    with regions.borrowed(location.region, location.key, location.offset, size) as view:
        array = tensor_codec.from_bytes(
            tensor.dtype, tensor.shape, view, field=field, packing=tensor.packing
        )
        copied = array.copy()
        del array
    return copied


def _stripped(name: str) -> str:
    return name[1:] if name.startswith("/") else name


def _checked_name(name: str) -> str:
    stripped = _stripped(name)
    if not NAME_PATTERN.fullmatch(stripped) or stripped in (".", ".."):
        raise InvalidSharedMemoryError(
            f"region name {name[:64]!r} is not 1 to 200 characters of A-Z, a-z, 0-9, '_', '-' "
            "and '.' (after an optional leading '/').",
            field="name",
        )
    return stripped


def _mapped(name: str, size: int, key: bytes) -> mmap.mmap:
    """The first ``size`` bytes of region ``name`` of this host, mapped, once it shows ``key``.

    The region is opened, never created or removed: its owner is the caller.
    """
    path = os.path.join(SHARED_MEMORY_DIR, name)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SharedMemoryNotFoundError(
            f"no shared-memory region {name!r} exists on the server's host; create it "
            "(e.g. multiprocessing.shared_memory) on this host before registering it.",
            field="name",
        ) from None
    except OSError as error:
        raise SharedMemoryPermissionError(
            f"the server cannot open shared-memory region {name!r}: {error.strerror}.",
            field="name",
        ) from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise SharedMemoryPermissionError(
                f"{name!r} is no shared-memory region.", field="name"
            )
        if size > status.st_size:
            raise InvalidSharedMemoryError(
                f"size is {size:,} bytes, but region {name!r} has {status.st_size:,}; "
                "register at most the region's size.",
                field="size",
            )
        memory = mmap.mmap(descriptor, size)
    finally:
        os.close(descriptor)
    if not hmac.compare_digest(memory[: len(key)], bytes(key)):
        memory.close()
        raise SharedMemoryPermissionError(
            f"region {name!r} does not start with the access key; write the key at offset 0 "
            "before registering, to show that the region is yours.",
            field="key",
        )
    return memory


__all__ = ["KEY_BYTES", "NAME_PATTERN", "SharedMemoryRegistry", "read_tensor"]
