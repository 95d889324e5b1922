"""The one mapping between hessd exceptions and gRPC statuses, used by server and SDK.

The server turns an exception into a ``google.rpc.Status`` with :func:`to_status`:
the status code from :data:`CODES`, the exception's message, an ``ErrorInfo``
(domain ``"hessd.v1"``, the error's UPPER_SNAKE_CASE ``reason``, its ``metadata``
plus ``"exception"``: the class name) and, when the error concerns one request
field, a ``BadRequest`` field violation whose ``field`` is a path into the
request (``x[name].data``, ``wrt``...). The SDK turns such a status back into the
same exception class, reason and metadata with :func:`from_status` (or
:func:`from_rpc_error` for a failed call), falling back to the code mapping when
the details are missing, e.g. for errors raised by gRPC itself.

Messages and field paths are cut to :data:`MAX_MESSAGE_CHARACTERS` and
:data:`MAX_FIELD_CHARACTERS`, so a status stays far below gRPC's metadata limits
whatever a caller sent.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hessd.errors import (
    ERROR_TYPES,
    REQUEST_ID_KEY,
    BatchDependenceError,
    CancelledError,
    DeadlineExceededError,
    HessdError,
    InternalError,
    InvalidArgumentError,
    InvalidReplyError,
    InvalidSharedMemoryError,
    ModelNotFoundError,
    OutOfMemoryError,
    ResultTooLargeError,
    SharedMemoryError,
    SharedMemoryExistsError,
    SharedMemoryNotFoundError,
    SharedMemoryPermissionError,
    UnauthenticatedError,
    UnavailableError,
)

DOMAIN = "hessd.v1"
"""``ErrorInfo.domain`` of every error hessd sends."""

EXCEPTION_KEY = "exception"
"""``ErrorInfo.metadata`` key naming the hessd exception class, e.g. ``"ShapeError"``."""

MAX_MESSAGE_CHARACTERS = 1024
"""A status message longer than this is cut, with "…"."""

MAX_FIELD_CHARACTERS = 256
"""A ``BadRequest`` field path longer than this is cut, with "…"."""

CODES: dict[type[HessdError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    ResultTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    OutOfMemoryError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BatchDependenceError: grpc.StatusCode.FAILED_PRECONDITION,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    CancelledError: grpc.StatusCode.CANCELLED,
    InternalError: grpc.StatusCode.INTERNAL,
    InvalidReplyError: grpc.StatusCode.DATA_LOSS,
    InvalidSharedMemoryError: grpc.StatusCode.INVALID_ARGUMENT,
    SharedMemoryNotFoundError: grpc.StatusCode.NOT_FOUND,
    SharedMemoryPermissionError: grpc.StatusCode.PERMISSION_DENIED,
    SharedMemoryExistsError: grpc.StatusCode.ALREADY_EXISTS,
    SharedMemoryError: grpc.StatusCode.FAILED_PRECONDITION,
    HessdError: grpc.StatusCode.UNKNOWN,
}
"""Status code of each exception type; a subclass takes its nearest listed base's code."""

_TYPES_BY_CODE: dict[grpc.StatusCode, type[HessdError]] = {
    code: error_type
    for error_type, code in reversed(CODES.items())
    if not issubclass(error_type, SharedMemoryError)  # known by their ErrorInfo only
}
_STATUS_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {
    code.value[0]: code for code in grpc.StatusCode
}


def status_code(error: HessdError) -> grpc.StatusCode:
    """The gRPC status code for ``error``, from its nearest base class listed in :data:`CODES`."""
    return next(CODES[base] for base in type(error).__mro__ if base in CODES)


def to_status(error: HessdError) -> status_pb2.Status:
    """``error`` as a ``google.rpc.Status`` with ErrorInfo and, if it has a field, BadRequest."""
    message = _cut(error.message, MAX_MESSAGE_CHARACTERS)
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=DOMAIN,
        metadata={**error.metadata, EXCEPTION_KEY: type(error).__name__},
    )
    details: list[error_details_pb2.ErrorInfo | error_details_pb2.BadRequest] = [info]
    if error.field is not None:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_cut(error.field, MAX_FIELD_CHARACTERS), description=message
                    )
                ]
            )
        )
    return status_pb2.Status(
        code=status_code(error).value[0],
        message=message,
        details=[_packed(detail) for detail in details],
    )


def from_status(status: status_pb2.Status) -> HessdError:
    """The exception a non-OK ``google.rpc.Status`` stands for.

    The class named in a hessd ``ErrorInfo``'s metadata when there is one, else
    the class mapped to the status code; ``reason`` and ``metadata`` come from
    the ErrorInfo, ``field`` from a ``BadRequest`` violation.
    """
    info: error_details_pb2.ErrorInfo | None = None
    field: str | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            unpacked = error_details_pb2.ErrorInfo()
            detail.Unpack(unpacked)
            if unpacked.domain == DOMAIN:
                info = unpacked
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            if bad_request.field_violations:
                field = bad_request.field_violations[0].field
    if info is None:
        code = _STATUS_CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
        return _from_code(code, status.message, field)
    metadata = dict(info.metadata)
    error_type = ERROR_TYPES.get(metadata.pop(EXCEPTION_KEY, ""))
    if error_type is None:
        code = _STATUS_CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
        error_type = _TYPES_BY_CODE.get(code, HessdError)
    return error_type(status.message, field=field, reason=info.reason, metadata=metadata)


def from_rpc_error(error: grpc.RpcError) -> HessdError:
    """The exception a failed call (sync or asyncio) stands for, with the call's
    ``x-request-id`` as its ``request_id``; see :func:`from_status`."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    if status is None:
        translated = _from_code(error.code(), error.details() or "", None)
    else:
        translated = from_status(status)
    translated.request_id = request_id_of(error)
    return translated


def request_id_of(call: grpc.RpcError) -> str | None:
    """The ``x-request-id`` in a finished call's trailing metadata, or ``None``."""
    return request_id_in(call.trailing_metadata())


def request_id_in(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The ``x-request-id`` among a call's ``metadata`` (initial or trailing), or ``None``."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


def _from_code(code: grpc.StatusCode, message: str, field: str | None) -> HessdError:
    error_type = _TYPES_BY_CODE.get(code)
    if error_type is None or error_type is HessdError:
        return HessdError(f"{code.name}: {message}", field=field)
    return error_type(message, field=field)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _packed(detail: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


__all__ = [
    "CODES",
    "DOMAIN",
    "EXCEPTION_KEY",
    "MAX_FIELD_CHARACTERS",
    "MAX_MESSAGE_CHARACTERS",
    "REQUEST_ID_KEY",
    "from_rpc_error",
    "from_status",
    "request_id_in",
    "request_id_of",
    "status_code",
    "to_status",
]
