"""The one family of exceptions shared by the engine, the server and the SDK.

The engine raises these in-process; the server maps each type to one gRPC
status code (see :mod:`hessd.status_codes`) and the SDK re-raises the same type
from the status it receives, so a caller writes the same ``except`` clause for
``hessd_server.hessian(...)`` and ``hessd.Client(...).hessian(...)``.

Every error also carries a machine-usable ``reason`` (UPPER_SNAKE_CASE, the
``google.rpc.ErrorInfo`` reason on the wire) and string ``metadata``, so code in
any language can tell e.g. a reply over the message size
(``REPLY_EXCEEDS_MESSAGE_SIZE``, retry with ``metadata["retry_rpc"]``) from a
result over the server's limit (``RESULT_EXCEEDS_LIMIT``).

>>> error = ResultTooLargeError("too big", reason="RESULT_EXCEEDS_LIMIT", metadata={"result_bytes": 9})
>>> (error.reason, error.metadata)
('RESULT_EXCEEDS_LIMIT', {'result_bytes': '9'})
>>> clipped("a" * 100)
"'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa…' (100 characters)"
"""

from __future__ import annotations

from collections.abc import Mapping

REQUEST_ID_KEY = "x-request-id"
"""The metadata key of a call's request id: sent by a caller that has one, and in
every reply's trailing metadata (where a raised error's ``request_id`` comes from)."""

CLIP_CHARACTERS = 64
"""Caller-supplied strings are quoted in messages up to this many characters."""


def clipped(text: object, limit: int = CLIP_CHARACTERS) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters with "…".

    A longer string also states its length, so a message never grows with what
    a caller sent.
    """
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit] + '…'!r} ({len(text):,} characters)"


def clipped_path(text: object, limit: int = CLIP_CHARACTERS) -> str:
    """A caller-supplied name inside a field path (``x[name]``), cut to ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"


class HessdError(Exception):
    """Base of every error hessd raises on purpose.

    Attributes:
        message: what went wrong and how to fix it.
        field: the request field the error is about, as a path into the request
            (``"x[input_1]"``, ``"x[input_1].data"``, ``"wrt"``,
            ``"output_weights"``...), or ``None`` when it concerns no single field.
        reason: a stable UPPER_SNAKE_CASE name of the cause, for code to branch
            on; defaults to the class's :attr:`default_reason`.
        metadata: facts about the cause as strings, e.g. ``{"expected_bytes":
            "120", "actual_bytes": "119"}``; keys are documented per reason.
        request_id: the id the server gave the failed call (its ``x-request-id``,
            in the server's log lines about it), on errors the SDK raises from a
            reply; ``None`` in-process and for errors of the SDK's own checks.
    """

    default_reason = "HESSD_ERROR"
    request_id: str | None = None

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason or self.default_reason
        self.metadata = {key: str(value) for key, value in (metadata or {}).items()}


class InvalidArgumentError(HessdError, ValueError):
    """A request the server could never answer as sent; change the request."""

    default_reason = "INVALID_ARGUMENT"


class ShapeError(InvalidArgumentError):
    """An input has the wrong rank or shape for the model."""

    default_reason = "SHAPE_MISMATCH"


class DtypeError(InvalidArgumentError):
    """An input has a dtype hessd cannot differentiate (it must be floating point)."""

    default_reason = "UNSUPPORTED_DTYPE"


class UnknownInputError(InvalidArgumentError):
    """``wrt`` (or an input name) names no input of the model."""

    default_reason = "UNKNOWN_INPUT"


class OutputWeightsError(InvalidArgumentError):
    """``output_weights`` does not have shape (K,) or (B, K)."""

    default_reason = "OUTPUT_WEIGHTS_MISMATCH"


class PrecisionError(InvalidArgumentError):
    """``precision`` is not one of the supported values, or the model cannot run at it."""

    default_reason = "UNSUPPORTED_PRECISION"


class TensorEncodingError(InvalidArgumentError):
    """A wire tensor cannot be decoded: its byte count does not match its shape and
    dtype, its dtype is unknown, or its shape is over the codec's limits."""

    default_reason = "TENSOR_ENCODING_INVALID"


class MalformedRequestError(InvalidArgumentError):
    """The request's bytes are not a valid message of the method's request type."""

    default_reason = "MALFORMED_REQUEST"


class ModelLoadError(InvalidArgumentError):
    """``load_model`` could not load the given source."""

    default_reason = "MODEL_LOAD_FAILED"


class ModelNotFoundError(HessdError, LookupError):
    """No model of that name (and version) is served."""

    default_reason = "MODEL_NOT_FOUND"


class ResultTooLargeError(HessdError):
    """The result or the reply would exceed a configured byte limit; nothing was computed."""

    default_reason = "RESULT_EXCEEDS_LIMIT"


class OutOfMemoryError(HessdError):
    """The computation ran out of memory; nothing was returned. Retry later, or send a smaller batch."""

    default_reason = "OUT_OF_MEMORY"


class BatchDependenceError(HessdError):
    """Per-example blocks were asked of a model whose examples influence each other.

    Such a model has no per-example Hessian; ask for ``full=True`` instead.
    """

    default_reason = "BATCH_DEPENDENT_MODEL"


class UnavailableError(HessdError):
    """The server is not ready yet, is shutting down, or is overloaded (its queue of
    requests is full); retry later, with backoff, or elsewhere."""

    default_reason = "UNAVAILABLE"


class UnauthenticatedError(HessdError, PermissionError):
    """The call carried no valid token (``authorization: Bearer <token>`` metadata;
    the SDK's ``token=``)."""

    default_reason = "UNAUTHENTICATED"


class DeadlineExceededError(HessdError, TimeoutError):
    """The call's deadline passed before the result was ready."""

    default_reason = "DEADLINE_EXCEEDED"


class CancelledError(HessdError):
    """The call was cancelled."""

    default_reason = "CANCELLED"


class InternalError(HessdError):
    """An unexpected failure; the server log holds the details."""

    default_reason = "INTERNAL"


class InvalidReplyError(HessdError):
    """A reply the request cannot get back: a result of another name, dtype, packing or
    shape than the request asked for. Raised by the SDK before it allocates anything
    for the reply; the server (or something between it and the client) is at fault,
    not the request."""

    default_reason = "REPLY_INVALID"


class SharedMemoryError(HessdError):
    """Shared memory cannot be used: it is off on the server, or the server holds
    as many regions as it allows. The SDK then sends results over the wire."""

    default_reason = "SHARED_MEMORY_UNAVAILABLE"


class InvalidSharedMemoryError(SharedMemoryError, InvalidArgumentError):
    """A shared-memory name, size, key or location is malformed or out of bounds."""

    default_reason = "SHARED_MEMORY_INVALID"


class SharedMemoryNotFoundError(SharedMemoryError, LookupError):
    """No such shared-memory region exists on the server's host, or none is registered by that name."""

    default_reason = "SHARED_MEMORY_NOT_FOUND"


class SharedMemoryPermissionError(SharedMemoryError, PermissionError):
    """The key does not match the region's, or the caller is not on the server's host."""

    default_reason = "SHARED_MEMORY_PERMISSION_DENIED"


class SharedMemoryExistsError(SharedMemoryError):
    """A region of that name is registered already."""

    default_reason = "SHARED_MEMORY_EXISTS"


ERROR_TYPES: dict[str, type[HessdError]] = {
    cls.__name__: cls
    for cls in (
        HessdError,
        InvalidArgumentError,
        ShapeError,
        DtypeError,
        UnknownInputError,
        OutputWeightsError,
        PrecisionError,
        TensorEncodingError,
        MalformedRequestError,
        ModelLoadError,
        ModelNotFoundError,
        ResultTooLargeError,
        OutOfMemoryError,
        BatchDependenceError,
        UnavailableError,
        UnauthenticatedError,
        DeadlineExceededError,
        CancelledError,
        InternalError,
        InvalidReplyError,
        SharedMemoryError,
        InvalidSharedMemoryError,
        SharedMemoryNotFoundError,
        SharedMemoryPermissionError,
        SharedMemoryExistsError,
    )
}
"""Every exception type by class name; the SDK uses it to re-raise the exact type."""

__all__ = [*ERROR_TYPES]
