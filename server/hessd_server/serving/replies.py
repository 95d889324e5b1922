"""Result arrays to reply bytes, on an engine thread rather than the event loop.

A request's ``result_encoding`` picks how its results travel: packed (upper
triangles of the Hessian), rounded to float16 or bfloat16, and inside the
reply or written into a registered shared-memory region. :class:`ReplyEncoder`
serializes each reply itself, joining the protobuf-serialized small fields with
the tensor bytes in one copy; the servicer hands the bytes to gRPC as they are
(see :mod:`hessd_server.serving.status_interceptor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import Message

from hessd import chunks, packing, tensor_codec
from hessd.wire_format import field_prefix
from hessd.errors import InvalidArgumentError, InvalidSharedMemoryError, ResultTooLargeError
from hessd.v1.tensor_pb2 import (
    DataType,
    Packing,
    ResultEncoding,
    SharedMemoryLocation,
    Tensor,
)

from .shared_memory import SharedMemoryRegistry

ALIGNMENT = 64
"""Byte alignment of each result after the first in a shared-memory region."""

NARROW_TYPES = (DataType.DATA_TYPE_FLOAT16, DataType.DATA_TYPE_BFLOAT16)
"""The ``DataType`` values a ``result_encoding`` may round results to."""
_PACKED_RESULT = "hessian"
_TENSOR_DATA_FIELD = Tensor.DESCRIPTOR.fields_by_name["data"].number


@dataclass(frozen=True)
class Encoding:
    """A request's validated ``result_encoding``.

    Attributes:
        packing: ``Packing`` of the Hessian.
        data_type: the ``DataType`` to round results to, or ``None`` to send them as computed.
        location: where in shared memory to write the results, or ``None`` for the reply.
    """

    packing: int
    data_type: int | None
    location: SharedMemoryLocation | None


def encoding_of(result_encoding: ResultEncoding, precision: int, *, chunked: bool) -> Encoding:
    """Check a request's ``result_encoding`` before anything is computed.

    Raises:
        InvalidArgumentError: an unknown packing or dtype, or shared memory on a chunked RPC.
    """
    if result_encoding.packing not in (Packing.PACKING_NONE, Packing.PACKING_UPPER):
        raise InvalidArgumentError(
            f"result_encoding.packing is {result_encoding.packing}; use PACKING_NONE or "
            "PACKING_UPPER.",
            field="result_encoding.packing",
            reason="RESULT_ENCODING_INVALID",
        )
    data_type: int | None = result_encoding.dtype
    if data_type in (DataType.DATA_TYPE_UNSPECIFIED, precision or DataType.DATA_TYPE_FLOAT32):
        data_type = None
    elif data_type not in NARROW_TYPES:
        raise InvalidArgumentError(
            f"result_encoding.dtype is {data_type}; use DATA_TYPE_FLOAT16, DATA_TYPE_BFLOAT16 "
            "or DATA_TYPE_UNSPECIFIED (the precision).",
            field="result_encoding.dtype",
            reason="RESULT_ENCODING_INVALID",
        )
    location = None
    if result_encoding.HasField("shared_memory"):
        if chunked:
            raise InvalidSharedMemoryError(
                "the chunked RPCs do not write to shared memory; call the unary RPC, whose "
                "reply is a few bytes when results go to shared memory.",
                field="result_encoding.shared_memory",
            )
        location = result_encoding.shared_memory
    return Encoding(result_encoding.packing, data_type, location)


@dataclass(frozen=True)
class _Payload:
    """One result as it travels: its ``DataType``, shape, ``Packing`` and bytes."""

    data_type: int
    shape: tuple[int, ...]
    packing: int
    data: memoryview

    def header(self) -> Tensor:
        return Tensor(dtype=self.data_type, shape=self.shape, packing=self.packing)


class ReplyEncoder:
    """Builds the wire bytes of replies that carry result tensors.

    Args:
        max_message_bytes: replies larger than this fail RESOURCE_EXHAUSTED.
        chunk_bytes: data bytes per ResultChunk.
        regions: the registered shared-memory regions.
    """

    def __init__(
        self, *, max_message_bytes: int, chunk_bytes: int, regions: SharedMemoryRegistry
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self._chunk_bytes = chunk_bytes
        self._regions = regions

    def reply(
        self,
        reply: Message,
        results: Mapping[str, np.ndarray],
        encoding: Encoding,
        *,
        remedy: str,
    ) -> bytes:
        """``reply`` (other fields already set) with ``results`` in its Tensor fields of
        the same names, serialized.

        Raises:
            ResultTooLargeError: the reply exceeds the max message size; ``remedy`` says
                what to call instead.
        """
        payloads = {name: _payload(name, array, encoding) for name, array in results.items()}
        if encoding.location is not None:
            self._write_to_shared_memory(reply, payloads, encoding.location)
            pieces = [reply.SerializeToString()]
        else:
            pieces = [reply.SerializeToString()]
            for name, payload in payloads.items():
                header = payload.header().SerializeToString()
                data_prefix = field_prefix(_TENSOR_DATA_FIELD, len(payload.data))
                length = len(header) + sum(map(len, data_prefix)) + len(payload.data)
                number = reply.DESCRIPTOR.fields_by_name[name].number
                pieces += [*field_prefix(number, length), header, *data_prefix, payload.data]
        size = sum(map(len, pieces))
        if size > self._max_message_bytes:
            raise ResultTooLargeError(
                f"the reply would take {size:,} bytes, over the max message size of "
                f"{self._max_message_bytes:,} bytes; {remedy} (hessd.Client picks the "
                "chunked RPCs by itself)",
                reason="REPLY_EXCEEDS_MESSAGE_SIZE",
                metadata={"reply_bytes": size, "max_message_bytes": self._max_message_bytes},
            )
        return b"".join(pieces)

    def chunks(
        self, results: Mapping[str, np.ndarray], encoding: Encoding, model_version: str
    ) -> list[bytes]:
        """``results`` as serialized ResultChunks, each result's chunks in turn."""
        serialized: list[bytes] = []
        for name, array in results.items():
            payload = _payload(name, array, encoding)
            serialized += chunks.serialized_chunks(
                name,
                payload.data_type,
                payload.shape,
                payload.packing,
                payload.data,
                chunk_bytes=self._chunk_bytes,
                model_version=model_version,
            )
        return serialized

    def _write_to_shared_memory(
        self, reply: Message, payloads: Mapping[str, _Payload], location: SharedMemoryLocation
    ) -> None:
        offsets, end = {}, 0
        for name, payload in payloads.items():
            offsets[name] = end
            end = _aligned(end + len(payload.data))
        pieces = [(offsets[name], payload.data) for name, payload in payloads.items()]
        self._regions.write(location.region, location.key, location.offset, pieces)
        for name, payload in payloads.items():
            tensor = payload.header()
            tensor.shared_memory.region = location.region.removeprefix("/")
            tensor.shared_memory.offset = location.offset + offsets[name]
            getattr(reply, name).CopyFrom(tensor)


def _payload(name: str, array: np.ndarray, encoding: Encoding) -> _Payload:
    shape = tuple(array.shape)
    if encoding.data_type is not None:
        array = array.astype(tensor_codec.numpy_dtype(encoding.data_type, field=name))
    layout = Packing.PACKING_NONE
    if name == _PACKED_RESULT and encoding.packing == Packing.PACKING_UPPER:
        array, layout = packing.pack_upper(array, field=name), Packing.PACKING_UPPER
    data_type, data = tensor_codec.wire_bytes(array, field=name)
    return _Payload(data_type, shape, layout, data)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


__all__ = ["ALIGNMENT", "NARROW_TYPES", "Encoding", "ReplyEncoder", "encoding_of"]
