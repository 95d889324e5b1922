"""Result arrays to reply bytes, on an engine thread rather than the event loop.

A request's ``result_encoding``, checked by the data plane
(:mod:`hessd_server.serving.data_plane.reply_plan`), picks how its results travel:
packed (upper triangles of the Hessian), rounded to float16 or bfloat16, and
inside the reply or written into a registered shared-memory region. :class:`ReplyEncoder`
serializes each reply itself, joining the protobuf-serialized small fields with
the tensor bytes in one copy; the servicer hands the bytes to gRPC as they are
(see :mod:`hessd_server.serving.grpc.status_interceptor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import Message

from hessd import chunks, packing, tensor_codec
from hessd.v1.tensor_pb2 import PACKING_NONE, PACKING_UPPER, SharedMemoryLocation, Tensor
from hessd.wire_format import field_prefix

from ..data_plane.reply_plan import Encoding, ReplyPlan
from ..data_plane.shared_memory import SharedMemoryRegistry
from ..observability import tracing

ALIGNMENT = 64
"""Byte alignment of each result after the first in a shared-memory region."""

_PACKED_RESULT = "hessian"
_TENSOR_DATA_FIELD = Tensor.DESCRIPTOR.fields_by_name["data"].number


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
        chunk_bytes: data bytes per ResultChunk.
        regions: the registered shared-memory regions.
    """

    def __init__(self, *, chunk_bytes: int, regions: SharedMemoryRegistry) -> None:
        self._chunk_bytes = chunk_bytes
        self._regions = regions

    def reply(
        self,
        reply: Message,
        results: Mapping[str, np.ndarray],
        plan: ReplyPlan,
    ) -> bytes:
        """``reply`` (other fields already set) with ``results`` in its Tensor fields of
        the same names, encoded as ``plan`` says, serialized.

        Raises:
            ResultTooLargeError: the reply exceeds the max message size (``plan.check``).
        """
        encoding = plan.encoding
        payloads = {name: _payload(name, array, encoding) for name, array in results.items()}
        if encoding.location is not None:
            with tracing.stage("hessd.shared_memory_write"):
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
        plan.check(sum(map(len, pieces)))
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
    layout = PACKING_NONE
    if name == _PACKED_RESULT and encoding.packing == PACKING_UPPER:
        array, layout = packing.pack_upper(array, field=name), PACKING_UPPER
    data_type, data = tensor_codec.wire_bytes(array, field=name)
    return _Payload(data_type, shape, layout, data)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


__all__ = ["ALIGNMENT", "ReplyEncoder"]
