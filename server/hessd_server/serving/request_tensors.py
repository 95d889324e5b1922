"""A request's input tensors, from the wire or from a caller's shared-memory region.

A tensor in shared memory is sized from its header (dtype, shape, packing)
against the server's input limit and the region's registered size before
anything is allocated or read; the read itself is a copy (``pread``), done on
a worker thread so that the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping
from typing import TypeVar

import numpy as np

from hessd import tensor_codec
from hessd.errors import TensorEncodingError
from hessd.v1.tensor_pb2 import Tensor

from .shared_memory import SharedMemoryRegistry

K = TypeVar("K", bound=Hashable)


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
    event loop, then the tensors in shared memory read together on a worker thread."""
    for field, tensor in tensors.values():
        if tensor.HasField("shared_memory"):
            shared_memory_bytes(tensor, field=field, max_bytes=max_bytes)
    if not any(tensor.HasField("shared_memory") for _, tensor in tensors.values()):
        return _read_all(regions, tensors, max_bytes)
    return await asyncio.to_thread(_read_all, regions, tensors, max_bytes)


def _read_all(
    regions: SharedMemoryRegistry, tensors: Mapping[K, tuple[str, Tensor]], max_bytes: int
) -> dict[K, np.ndarray]:
    return {
        key: read_tensor(regions, tensor, field=field, max_bytes=max_bytes)
        for key, (field, tensor) in tensors.items()
    }


__all__ = ["read_tensor", "read_tensors", "shared_memory_bytes"]
