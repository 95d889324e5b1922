"""Results larger than one gRPC message, as streams of ``hessd.v1.ResultChunk``.

The server splits each result tensor's raw bytes with :func:`split`; the SDK
rebuilds the arrays with :class:`Reassembler`, which checks that every tensor
arrives whole and in order. The bytes are those of
:func:`hessd.tensor_codec.encode`, and arrays come back through
:func:`hessd.tensor_codec.from_bytes`.

>>> import numpy as np
>>> from hessd import tensor_codec
>>> tensor = tensor_codec.encode(np.arange(10, dtype=np.float32), field="hessian")
>>> pieces = list(split("hessian", tensor, chunk_bytes=16))
>>> [len(piece.data) for piece in pieces]
[16, 16, 8]
>>> reassembler = Reassembler()
>>> for piece in pieces:
...     reassembler.add(piece)
>>> reassembler.arrays(("hessian",))[0].tolist()
[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hessd import tensor_codec
from hessd.errors import TensorEncodingError
from hessd.v1.tensor_pb2 import ResultChunk, Tensor


def split(name: str, tensor: Tensor, *, chunk_bytes: int) -> Iterator[ResultChunk]:
    """Yield ``tensor`` as chunks named ``name`` of at most ``chunk_bytes`` data bytes each.

    An empty tensor yields one chunk with empty data, so its dtype and shape still arrive.
    """
    data = tensor.data
    for offset in range(0, max(len(data), 1), chunk_bytes):
        yield ResultChunk(
            name=name,
            dtype=tensor.dtype,
            shape=tensor.shape,
            offset=offset,
            data=data[offset : offset + chunk_bytes],
        )


@dataclass
class _Partial:
    dtype: int
    shape: tuple[int, ...]
    buffer: bytearray
    filled: int = 0


class Reassembler:
    """Collects the chunks of one chunked reply into whole arrays."""

    def __init__(self) -> None:
        self._partials: dict[str, _Partial] = {}
        self._current: str | None = None

    def add(self, chunk: ResultChunk) -> None:
        """Append one chunk; chunks of a tensor must come consecutively and in offset order.

        Raises:
            TensorEncodingError: the chunk does not continue its tensor.
        """
        partial = self._partials.get(chunk.name)
        if partial is None:
            if self._current is not None:
                self._check_complete(self._current)
            shape = tuple(chunk.shape)
            size = tensor_codec.nbytes(chunk.dtype, shape, field=chunk.name)
            partial = _Partial(chunk.dtype, shape, bytearray(size))
            self._partials[chunk.name] = partial
            self._current = chunk.name
        elif chunk.name != self._current:
            raise TensorEncodingError(
                f"chunks of {chunk.name} resumed after another tensor began.", field=chunk.name
            )
        if (chunk.dtype, tuple(chunk.shape)) != (partial.dtype, partial.shape):
            raise TensorEncodingError(
                f"a chunk of {chunk.name} changed dtype or shape mid-tensor.", field=chunk.name
            )
        end = chunk.offset + len(chunk.data)
        if chunk.offset != partial.filled or end > len(partial.buffer):
            raise TensorEncodingError(
                f"a chunk of {chunk.name} covers bytes {chunk.offset}..{end}, but bytes "
                f"{partial.filled}..{len(partial.buffer)} were expected next.",
                field=chunk.name,
            )
        partial.buffer[chunk.offset : end] = chunk.data
        partial.filled = end

    def arrays(self, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
        """The reassembled arrays named ``names``, in that order.

        Each is read-only, with the dtype and shape its chunks carried.

        Raises:
            TensorEncodingError: a tensor is incomplete, missing, or not among ``names``.
        """
        if set(self._partials) != set(names):
            raise TensorEncodingError(
                f"the chunked reply held {sorted(self._partials)}, not {sorted(names)}.",
                field=None,
            )
        for name in names:
            self._check_complete(name)
        return tuple(
            tensor_codec.from_bytes(
                self._partials[name].dtype,
                self._partials[name].shape,
                self._partials[name].buffer,
                field=name,
            )
            for name in names
        )

    def _check_complete(self, name: str) -> None:
        partial = self._partials[name]
        if partial.filled != len(partial.buffer):
            raise TensorEncodingError(
                f"{name} ended after {partial.filled} of {len(partial.buffer)} bytes.", field=name
            )


__all__ = ["Reassembler", "split"]
