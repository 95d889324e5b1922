"""Results larger than one gRPC message, as streams of ``hessd.v1.ResultChunk``.

The server cuts each result tensor's bytes with :func:`serialized_chunks`,
which writes every chunk's wire bytes with one copy of its data; the SDK
rebuilds the arrays with :class:`Reassembler`, which copies each chunk's data
once, into one buffer per tensor allocated up front, and checks that every
tensor arrives whole and in order. Arrays come back through
:func:`hessd.tensor_codec.from_bytes`.

>>> import numpy as np
>>> from hessd.v1.tensor_pb2 import DataType
>>> data = memoryview(np.arange(10, dtype="<f4").tobytes())
>>> pieces = serialized_chunks("hessian", DataType.DATA_TYPE_FLOAT32, (10,), 0, data, chunk_bytes=16)
>>> [len(ResultChunk.FromString(piece).data) for piece in pieces]
[16, 16, 8]
>>> reassembler = Reassembler()
>>> for piece in pieces:
...     reassembler.add_serialized(piece)
>>> reassembler.arrays(("hessian",))[0].tolist()
[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from hessd import tensor_codec
from hessd.wire_format import cut_field, field_prefix
from hessd.errors import TensorEncodingError
from hessd.reply_bounds import ReplyBound
from hessd.v1.tensor_pb2 import ResultChunk

_DATA_FIELD = ResultChunk.DESCRIPTOR.fields_by_name["data"].number


def serialized_chunks(
    name: str,
    data_type: int,
    shape: Sequence[int],
    packing: int,
    data: memoryview,
    *,
    chunk_bytes: int,
    model_version: str = "",
) -> list[bytes]:
    """One tensor's bytes ``data`` as serialized ResultChunks of at most ``chunk_bytes`` each,
    computed by ``model_version`` of the model.

    An empty tensor gives one chunk with empty data, so its dtype and shape still arrive.
    """
    pieces = []
    for offset in range(0, max(len(data), 1), chunk_bytes):
        header = ResultChunk(
            name=name,
            dtype=data_type,
            shape=shape,
            offset=offset,
            packing=packing,
            model_version=model_version,
        ).SerializeToString()
        piece = data[offset : offset + chunk_bytes]
        pieces.append(b"".join((header, *field_prefix(_DATA_FIELD, len(piece)), piece)))
    return pieces


@dataclass
class _Partial:
    dtype: int
    shape: tuple[int, ...]
    packing: int
    buffer: np.ndarray
    filled: int = 0


class Reassembler:
    """Collects the chunks of one chunked reply into whole arrays.

    Args:
        bound: what the reply may hold (see :mod:`hessd.reply_bounds`); each
            tensor's first chunk is checked against it before the tensor's
            buffer is allocated. ``None`` admits any tensor within the codec's limits.
    """

    def __init__(self, bound: ReplyBound | None = None) -> None:
        self._bound = bound
        self._partials: dict[str, _Partial] = {}
        self._current: str | None = None
        self.model_version = ""
        """The model version the chunks name (the last chunk's)."""

    def add(self, chunk: ResultChunk) -> None:
        """Append one chunk; chunks of a tensor must come consecutively and in offset order,
        each with at least one byte (only an empty tensor's one chunk has none).

        Raises:
            InvalidReplyError: the chunk begins a tensor the bound does not admit.
            TensorEncodingError: the chunk does not continue its tensor.
        """
        self._add(chunk, chunk.data)

    def add_serialized(self, raw: bytes) -> None:
        """:meth:`add` for a chunk's wire bytes, copying its data only into the tensor's buffer.

        Raises:
            InvalidReplyError: as for :meth:`add`.
            TensorEncodingError: ``raw`` is no ResultChunk, or does not continue its tensor.
        """
        rest, data = cut_field(raw, _DATA_FIELD)
        try:
            chunk = ResultChunk.FromString(rest)
        except DecodeError as error:
            raise TensorEncodingError(f"a reply chunk is malformed: {error}", field=None) from None
        self._add(chunk, data)

    def _add(self, chunk: ResultChunk, data: bytes | memoryview) -> None:
        partial = self._partials.get(chunk.name)
        if partial is None:
            if self._current is not None:
                self._check_complete(self._current)
            shape = tuple(chunk.shape)
            if self._bound is not None:
                self._bound.check(chunk.name, chunk.dtype, shape, chunk.packing)
            size = tensor_codec.nbytes(chunk.dtype, shape, field=chunk.name, packing=chunk.packing)
            # np.empty, not bytearray: no zero-filling pass, and numpy asks for huge pages
            partial = _Partial(chunk.dtype, shape, chunk.packing, np.empty(size, np.uint8))
            self._partials[chunk.name] = partial
            self._current = chunk.name
        elif chunk.name != self._current:
            raise TensorEncodingError(
                f"chunks of {chunk.name} resumed after another tensor began.", field=chunk.name
            )
        elif not data:
            raise TensorEncodingError(
                f"a chunk of {chunk.name} after its first carries no bytes.", field=chunk.name
            )
        if (chunk.dtype, tuple(chunk.shape), chunk.packing) != (
            partial.dtype,
            partial.shape,
            partial.packing,
        ):
            raise TensorEncodingError(
                f"a chunk of {chunk.name} changed dtype, shape or packing mid-tensor.",
                field=chunk.name,
            )
        end = chunk.offset + len(data)
        if chunk.offset != partial.filled or end > len(partial.buffer):
            raise TensorEncodingError(
                f"a chunk of {chunk.name} covers bytes {chunk.offset}..{end}, but bytes "
                f"{partial.filled}..{len(partial.buffer)} were expected next.",
                field=chunk.name,
            )
        partial.buffer[chunk.offset : end] = np.frombuffer(data, np.uint8)
        partial.filled = end
        self.model_version = chunk.model_version

    def arrays(self, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
        """The reassembled arrays named ``names``, in that order.

        Each is read-only, with the dtype and shape its chunks carried (unpacked
        when they were packed).

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
                packing=self._partials[name].packing,
            )
            for name in names
        )

    def _check_complete(self, name: str) -> None:
        partial = self._partials[name]
        if partial.filled != len(partial.buffer):
            raise TensorEncodingError(
                f"{name} ended after {partial.filled} of {len(partial.buffer)} bytes.", field=name
            )


__all__ = ["Reassembler", "serialized_chunks"]
