"""Callers' POSIX shared-memory regions, read and written by the server while registered.

A region is registered by name, size and access key (see
``proto/hessd/v1/shared_memory.proto``), then proven: the server hands the
caller a fresh random proof, the caller writes it at :data:`PROOF_OFFSET` of
the region and confirms, and the server reads it back. Only a caller that can
write the region gets that far, and a region that group or others may write is
refused, so the writer is the region's owner (or a privileged user). Every use
names the region, repeats the key and is checked against the registered size
before any byte is touched.

The server never maps a region: it reads and writes through the region's file
descriptor (``pread``/``pwrite``), each access bounded by a fresh ``fstat``, so
a caller that shrinks its region gets an error, not a server killed by SIGBUS.
A region stays open while calls borrow it, even when it is unregistered
meanwhile; the last borrower closes it.

A request's tensor in shared memory is sized from its header (dtype, shape,
packing) against the server's input limit and the region's registered size
before anything is allocated or read; :func:`read_tensors` reads it on a worker
thread, so that the event loop keeps serving meanwhile.

>>> regions = SharedMemoryRegistry(max_region_bytes=1 << 20, max_regions=4)
>>> regions.register("no-such-region", 64, b"k" * 16)
Traceback (most recent call last):
...
hessd.errors.SharedMemoryNotFoundError: no shared-memory region 'no-such-region' exists on the server's host; create it (e.g. multiprocessing.shared_memory) on this host before registering it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
import secrets
import stat
import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

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

PROOF_BYTES = 32
"""Length of the random proof a caller writes into its region to confirm it."""

PROOF_OFFSET = 0
"""Where in the region the caller writes the proof."""

SHARED_MEMORY_DIR = "/dev/shm"
"""Where POSIX shared-memory regions live (Linux: shm_open opens files here)."""

_SHARED_WRITE_BITS = stat.S_IWGRP | stat.S_IWOTH

K = TypeVar("K", bound=Hashable)


@dataclass
class _Region:
    name: str
    key: bytes
    size: int
    descriptor: int
    proof: bytes | None
    """The proof the caller is to write; ``None`` once confirmed."""
    borrowers: int = 0
    unregistered: bool = False


class SharedMemoryRegistry:
    """The registered regions of one server, safe to use from any thread.

    Args:
        max_region_bytes: largest registered size.
        max_regions: most regions registered at once (confirmed or not).
    """

    def __init__(self, *, max_region_bytes: int, max_regions: int) -> None:
        self._max_region_bytes = max_region_bytes
        self._max_regions = max_regions
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)
        self._open = 0

    @property
    def names(self) -> list[str]:
        """The registered region names, sorted."""
        with self._lock:
            return sorted(self._regions)

    @property
    def open(self) -> int:
        """Regions open now: registered ones and unregistered ones still borrowed."""
        with self._lock:
            return self._open

    def register(self, name: str, size: int, key: bytes) -> tuple[str, bytes]:
        """Open region ``name`` for ``size`` bytes under ``key``, unconfirmed.

        Returns:
            The name without "/", and the proof (:data:`PROOF_BYTES` random bytes)
            the caller is to write at :data:`PROOF_OFFSET` before :meth:`confirm`.

        Raises:
            InvalidSharedMemoryError: a malformed name, a key of the wrong length,
                or a size below :data:`PROOF_BYTES` or beyond the region or the
                server's limit.
            SharedMemoryNotFoundError: no region of that name exists on this host.
            SharedMemoryPermissionError: the server cannot open it, it is no regular
                file, or group or others may write it.
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
        if not PROOF_OFFSET + PROOF_BYTES <= size <= self._max_region_bytes:
            raise InvalidSharedMemoryError(
                f"size is {size:,} bytes; register {PROOF_OFFSET + PROOF_BYTES} to "
                f"{self._max_region_bytes:,} bytes.",
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
            descriptor = _opened(name, size)
            proof = secrets.token_bytes(PROOF_BYTES)
            self._regions[name] = _Region(name, bytes(key), size, descriptor, proof)
            self._open += 1
        return name, proof

    def confirm(self, name: str, key: bytes) -> None:
        """Make a registered region usable once it holds its proof at :data:`PROOF_OFFSET`.

        Raises:
            SharedMemoryNotFoundError: no region of that name is registered.
            SharedMemoryPermissionError: ``key`` is not the region's, the region does
                not hold the proof, or group or others may now write it.
            SharedMemoryError: the region shrank below the proof (``SHARED_MEMORY_TOO_SMALL``).
        """
        with self._lease(_stripped(name), key, confirmed=False) as region:
            expected = region.proof
            if expected is None:
                return
            _check_owned(region.name, os.fstat(region.descriptor).st_mode)
            written = _pread(region, PROOF_OFFSET, PROOF_BYTES)
            if not hmac.compare_digest(written, expected):
                raise SharedMemoryPermissionError(
                    f"region {region.name!r} does not hold the proof at byte {PROOF_OFFSET}; "
                    "write the proof RegisterSharedMemory replied with there, then confirm.",
                    field="name",
                    reason="SHARED_MEMORY_PROOF_MISMATCH",
                )
            with self._lock:
                region.proof = None

    def unregister(self, name: str, key: bytes) -> None:
        """End the registration of ``name``; it is closed once no call borrows it.

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

    def read(self, region: str, key: bytes, offset: int, nbytes: int) -> np.ndarray:
        """A copy of bytes ``offset`` to ``offset + nbytes`` of a confirmed region, as uint8.

        The bounds are checked against the registered size before anything is
        allocated or read, and against the region's size now before reading.

        Raises:
            SharedMemoryNotFoundError: no region of that name is registered.
            SharedMemoryPermissionError: ``key`` is not the region's.
            InvalidSharedMemoryError: the bytes do not lie within the registered size.
            SharedMemoryError: the region is not confirmed (``SHARED_MEMORY_UNCONFIRMED``),
                or shrank below them (``SHARED_MEMORY_TOO_SMALL``).
        """
        with self._lease(_stripped(region), key, offset=offset, nbytes=nbytes) as found:
            data = np.empty(nbytes, np.uint8)
            _check_size(found, offset + nbytes)
            _pread_into(found, offset, memoryview(data))
        return data

    def write(
        self, region: str, key: bytes, offset: int, pieces: Sequence[tuple[int, memoryview]]
    ) -> None:
        """Write each (relative offset, bytes) of ``pieces`` at ``offset`` plus its offset.

        Raises:
            As :meth:`read`, for the span from ``offset`` to the end of the last piece.
        """
        nbytes = max((start + len(data) for start, data in pieces), default=0)
        with self._lease(_stripped(region), key, offset=offset, nbytes=nbytes) as found:
            _check_size(found, offset + nbytes)
            for start, data in pieces:
                _pwrite_all(found.descriptor, data, offset + start)

    def close(self) -> None:
        """End every registration (the server is stopping)."""
        with self._lock:
            for region in list(self._regions.values()):
                self._drop(region)

    def wait_closed(self, timeout: float) -> bool:
        """Whether every region is closed within ``timeout`` seconds."""
        with self._lock:
            return self._emptied.wait_for(lambda: self._open == 0, timeout)

    @contextlib.contextmanager
    def _lease(
        self,
        name: str,
        key: bytes,
        *,
        confirmed: bool = True,
        offset: int = 0,
        nbytes: int = 0,
    ) -> Iterator[_Region]:
        """The region, kept open for the block; bytes ``offset`` to ``offset + nbytes``
        must lie within its registered size, and it must be confirmed if ``confirmed``."""
        with self._lock:
            found = self._checked(name, key)
            if confirmed and found.proof is not None:
                raise SharedMemoryError(
                    f"region {name!r} is registered but not confirmed; write the proof "
                    "RegisterSharedMemory replied with and call ConfirmSharedMemory first.",
                    field="shared_memory.region",
                    reason="SHARED_MEMORY_UNCONFIRMED",
                )
            if offset < 0 or nbytes < 0 or offset + nbytes > found.size:
                raise InvalidSharedMemoryError(
                    f"bytes {offset:,}..{offset + nbytes:,} do not lie within region "
                    f"{found.name!r} of {found.size:,} registered bytes; register a larger "
                    "region or use a smaller offset.",
                    field="shared_memory.offset",
                )
            found.borrowers += 1
        try:
            yield found
        finally:
            with self._lock:
                found.borrowers -= 1
                if found.unregistered and found.borrowers == 0:
                    self._close(found)

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
            self._close(region)

    def _close(self, region: _Region) -> None:
        os.close(region.descriptor)
        self._open -= 1
        self._emptied.notify_all()


def read_tensor(
    regions: SharedMemoryRegistry, tensor: Tensor, *, field: str, max_bytes: int
) -> np.ndarray:
    """``tensor`` as a read-only array; read (a copy) from shared memory when it lies there.

    Blocks while it reads: call it off the event loop for a tensor in shared memory.

    Raises:
        TensorEncodingError: as :func:`hessd.tensor_codec.decode` (a header over
            ``max_bytes`` included); also when both ``data`` and ``shared_memory`` are set.
        SharedMemoryError: as :meth:`SharedMemoryRegistry.read`.
    """
    if not tensor.HasField("shared_memory"):
        return tensor_codec.decode(tensor, field=field, max_bytes=max_bytes)
    size = shared_memory_bytes(tensor, field=field, max_bytes=max_bytes)
    location = tensor.shared_memory
    data = regions.read(location.region, location.key, location.offset, size)
    return tensor_codec.from_bytes(
        tensor.dtype, tensor.shape, memoryview(data), field=field, packing=tensor.packing
    )


def shared_memory_bytes(tensor: Tensor, *, field: str, max_bytes: int) -> int:
    """Bytes a tensor in shared memory takes, from its header alone.

    Raises:
        TensorEncodingError: the header is malformed or over ``max_bytes``, or the
            tensor also carries ``data``.
    """
    if tensor.data:
        raise TensorEncodingError(
            f"{field} has both data and shared_memory; send its bytes in one of them.", field=field
        )
    return tensor_codec.nbytes(
        tensor.dtype, tensor.shape, field=field, packing=tensor.packing, max_bytes=max_bytes
    )


async def read_tensors(
    regions: SharedMemoryRegistry, tensors: Mapping[K, tuple[str, Tensor]], *, max_bytes: int
) -> dict[K, np.ndarray]:
    """:func:`read_tensor` of each (field path, tensor) by key: headers checked on the
    event loop, then the tensors in shared memory read together on a worker thread.

    Raises:
        TensorEncodingError: as :func:`read_tensor`; also when the tensors in shared
            memory take more than ``max_bytes`` together (as they could not over the wire).
    """
    shared = {
        field: shared_memory_bytes(tensor, field=field, max_bytes=max_bytes)
        for field, tensor in tensors.values()
        if tensor.HasField("shared_memory")
    }
    if not shared:
        return _read_all(regions, tensors, max_bytes)
    if sum(shared.values()) > max_bytes:
        raise TensorEncodingError(
            f"the request's tensors in shared memory ({', '.join(shared)}) take "
            f"{sum(shared.values()):,} bytes together, over the {max_bytes:,} bytes a request "
            "may carry; send smaller tensors.",
            field=next(iter(shared)),
            reason="TENSOR_SHAPE_EXCEEDS_LIMIT",
            metadata={"max_bytes": max_bytes},
        )
    return await asyncio.to_thread(_read_all, regions, tensors, max_bytes)


def _read_all(
    regions: SharedMemoryRegistry, tensors: Mapping[K, tuple[str, Tensor]], max_bytes: int
) -> dict[K, np.ndarray]:
    return {
        key: read_tensor(regions, tensor, field=field, max_bytes=max_bytes)
        for key, (field, tensor) in tensors.items()
    }


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


def _opened(name: str, size: int) -> int:
    """A read-write descriptor of region ``name`` of this host, once it has ``size`` bytes.

    The region is opened, never created or removed: its owner is the caller.
    """
    path = os.path.join(SHARED_MEMORY_DIR, name)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
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
        _check_owned(name, status.st_mode)
        if size > status.st_size:
            raise InvalidSharedMemoryError(
                f"size is {size:,} bytes, but region {name!r} has {status.st_size:,}; "
                "register at most the region's size.",
                field="size",
            )
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _check_owned(name: str, mode: int) -> None:
    """Refuse a region that group or others may write: the proof would not show that
    its writer is its owner."""
    if mode & _SHARED_WRITE_BITS:
        raise SharedMemoryPermissionError(
            f"region {name!r} may be written by group or others (mode {stat.filemode(mode)}); "
            "create it writable by its owner only (e.g. mode 0600, as "
            "multiprocessing.shared_memory does).",
            field="name",
            reason="SHARED_MEMORY_SHARED_WRITE",
        )


def _check_size(region: _Region, end: int) -> None:
    """Refuse an access up to byte ``end`` of a region that has shrunk below it."""
    size = os.fstat(region.descriptor).st_size
    if end > size:
        raise SharedMemoryError(
            f"region {region.name!r} shrank to {size:,} bytes, below byte {end:,} of this "
            "call; keep a registered region at least its registered size, or unregister it.",
            field="shared_memory.region",
            reason="SHARED_MEMORY_TOO_SMALL",
            metadata={"region_bytes": size, "needed_bytes": end},
        )


def _pread(region: _Region, offset: int, nbytes: int) -> bytes:
    data = bytearray(nbytes)
    _check_size(region, offset + nbytes)
    _pread_into(region, offset, memoryview(data))
    return bytes(data)


def _pread_into(region: _Region, offset: int, buffer: memoryview) -> None:
    """Fill ``buffer`` from the region at ``offset``; a region that shrinks meanwhile
    ends the read short, which is refused as ``SHARED_MEMORY_TOO_SMALL``."""
    done = 0
    while done < len(buffer):
        count = os.preadv(region.descriptor, [buffer[done:]], offset + done)
        if count == 0:
            _check_size(region, offset + len(buffer))
            raise SharedMemoryError(
                f"region {region.name!r} shrank while it was read; keep a registered region "
                "at least its registered size.",
                field="shared_memory.region",
                reason="SHARED_MEMORY_TOO_SMALL",
            )
        done += count


def _pwrite_all(descriptor: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(descriptor, data[done:], offset + done)


__all__ = [
    "KEY_BYTES",
    "NAME_PATTERN",
    "PROOF_BYTES",
    "PROOF_OFFSET",
    "SharedMemoryRegistry",
    "read_tensor",
    "read_tensors",
    "shared_memory_bytes",
]
