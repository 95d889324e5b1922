"""What each RPC's reply may hold, and the one check that it fits a message.

A request's ``result_encoding`` is checked here before anything is computed
(:func:`encoding_of`), and every reply-size refusal of the server comes from
:meth:`ReplyPlan.check`: once before computing, from the input shapes
(:meth:`ReplyPlan.check_estimate`), and once on the reply as built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hessd.errors import InvalidArgumentError, InvalidSharedMemoryError, ResultTooLargeError
from hessd.v1.hessian_service_pb2 import EvaluateRequest, HessianRequest
from hessd.v1.tensor_pb2 import (
    DATA_TYPE_FLOAT32,
    DATA_TYPE_UNSPECIFIED,
    PACKING_NONE,
    PACKING_UPPER,
    DataType,
    Packing,
    ResultEncoding,
    SharedMemoryLocation,
)

NARROW_TYPES = (DataType.DATA_TYPE_FLOAT16, DataType.DATA_TYPE_BFLOAT16)
"""The ``DataType`` values a ``result_encoding`` may round results to."""

REPLY_OVERHEAD_BYTES = 1024
"""Room left in a reply's size estimate for everything but the result bytes."""

CHUNKED_REMEDY = "hessd.Client picks the chunked RPCs by itself"
"""Said after every reply-size refusal's remedy."""


@dataclass(frozen=True, slots=True)
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


PLAIN_ENCODING = Encoding(Packing.PACKING_NONE, None, None)
"""The encoding of a request without ``result_encoding``: results as computed, in the reply."""


@dataclass(frozen=True, slots=True)
class Rpc:
    """How one RPC's reply is planned.

    Attributes:
        name: the RPC's name, as metrics and logs give it.
        sized_by: the result a one-message reply is judged by before computing:
            ``"hessian"``, ``"evaluation"``, ``"gradient"`` (a (B, *S) array), or
            ``None`` when it is judged only once built (chunked RPCs, curvature summaries).
        chunked: whether the results travel as ResultChunks (of any size).
        retry_rpc: the RPC that streams a result too large for this one's reply, if any.
        remedy: what a caller whose reply is too large should do instead.
    """

    name: str
    sized_by: str | None
    chunked: bool = False
    retry_rpc: str | None = None
    remedy: str = "send a smaller batch"


RPCS: Mapping[str, Rpc] = {
    rpc.name: rpc
    for rpc in (
        Rpc(
            "Hessian",
            "hessian",
            retry_rpc="HessianChunked",
            remedy="call HessianChunked, which streams results of any size",
        ),
        Rpc(
            "StreamHessian",
            "hessian",
            retry_rpc="HessianChunked",
            remedy="call HessianChunked for this batch, which streams results of any size",
        ),
        Rpc("HessianChunked", None, chunked=True),
        Rpc(
            "Evaluate",
            "evaluation",
            retry_rpc="EvaluateChunked",
            remedy="call EvaluateChunked, which streams results of any size",
        ),
        Rpc("EvaluateChunked", None, chunked=True),
        Rpc("Gradient", "gradient"),
        Rpc("HessianVectorProduct", "gradient"),
        Rpc("HessianDiagonal", None),
        Rpc("HessianTrace", None),
        Rpc("HessianEigen", None, remedy="send a smaller batch or ask for fewer k"),
        Rpc("HessianSpectrum", None, remedy="send a smaller batch or fewer probes or iterations"),
    )
}
"""Every ``hessd.v1.HessianService`` RPC that computes, by name."""


def encoding_of(result_encoding: ResultEncoding, precision: int, *, chunked: bool) -> Encoding:
    """Check a request's ``result_encoding`` before anything is computed.

    Raises:
        InvalidArgumentError: an unknown packing or dtype.
        InvalidSharedMemoryError: shared memory on a chunked RPC.
    """
    if result_encoding.packing not in (PACKING_NONE, PACKING_UPPER):
        raise InvalidArgumentError(
            f"result_encoding.packing is {result_encoding.packing}; use PACKING_NONE or "
            "PACKING_UPPER.",
            field="result_encoding.packing",
            reason="RESULT_ENCODING_INVALID",
        )
    data_type: int | None = result_encoding.dtype
    if data_type in (DATA_TYPE_UNSPECIFIED, precision or DATA_TYPE_FLOAT32):
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


def request_encoding(request: HessianRequest | EvaluateRequest, *, chunked: bool) -> Encoding:
    """The checked ``result_encoding`` of ``request``; :data:`PLAIN_ENCODING` when it sets none.

    Raises:
        InvalidArgumentError, InvalidSharedMemoryError: as :func:`encoding_of`.
    """
    if not request.HasField("result_encoding"):
        return PLAIN_ENCODING
    return encoding_of(request.result_encoding, request.precision, chunked=chunked)


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """How one request's results are to travel, and the size its reply may take.

    Attributes:
        rpc: the RPC answered.
        encoding: the request's checked ``result_encoding``.
        max_message_bytes: replies larger than this are refused.
    """

    rpc: Rpc
    encoding: Encoding
    max_message_bytes: int

    def check(self, reply_bytes: int, *, estimated: bool = False) -> None:
        """Refuse a reply of ``reply_bytes`` that exceeds one message.

        Raises:
            ResultTooLargeError: RESOURCE_EXHAUSTED, reason ``REPLY_EXCEEDS_MESSAGE_SIZE``,
                with ``reply_bytes``, ``max_message_bytes`` and (where one exists)
                ``retry_rpc`` in its metadata.
        """
        if reply_bytes <= self.max_message_bytes:
            return
        retry = {"retry_rpc": self.rpc.retry_rpc} if self.rpc.retry_rpc else {}
        raise ResultTooLargeError(
            f"the reply would take {'about ' if estimated else ''}{reply_bytes:,} bytes, over "
            f"the max message size of {self.max_message_bytes:,} bytes; {self.rpc.remedy} "
            f"({CHUNKED_REMEDY})",
            reason="REPLY_EXCEEDS_MESSAGE_SIZE",
            metadata={"reply_bytes": reply_bytes, "max_message_bytes": self.max_message_bytes, **retry},
        )

    def check_estimate(
        self, x: Mapping[str, np.ndarray], wrt: str | tuple[str, ...] | None, *, full: bool, precision: str | None
    ) -> None:
        """Refuse, before computing, a result whose reply cannot fit one message.

        The size follows from the differentiated inputs' shapes (B, *S) (several
        ``wrt`` inputs add up their sizes), ``full``, ``precision`` and the encoding
        (a packed Hessian, results rounded to 16 bits). A request whose inputs the
        engine would refuse anyway is left to it, and so is one whose results go to
        shared memory (its reply holds no result bytes) or whose RPC is judged only
        once built.
        """
        result = self.rpc.sized_by
        if result is None or self.encoding.location is not None:
            return
        if isinstance(wrt, tuple):
            names = wrt
        else:
            names = (wrt,) if wrt in x else tuple(x) if len(x) == 1 else ()
        arrays = [x.get(name) for name in names]
        if not arrays or any(a is None or a.ndim < 1 or a.shape[0] != arrays[0].shape[0] for a in arrays):
            return
        batch, size = arrays[0].shape[0], sum(math.prod(a.shape[1:]) for a in arrays)
        elements = batch * size
        if result != "gradient":
            count, n = (1, elements) if full else (batch, size)
            packed = self.encoding.packing == PACKING_UPPER
            elements = count * (n * (n + 1) // 2 if packed else n * n)
        if result == "evaluation":
            elements += batch + batch * size
        if self.encoding.data_type is not None:
            itemsize = 2
        else:
            itemsize = 8 if precision == "float64" else 4
        self.check(elements * itemsize + REPLY_OVERHEAD_BYTES, estimated=True)


__all__ = [
    "NARROW_TYPES",
    "PLAIN_ENCODING",
    "RPCS",
    "Encoding",
    "ReplyPlan",
    "Rpc",
    "encoding_of",
    "request_encoding",
]
