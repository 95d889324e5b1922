"""The one family of exceptions shared by the engine, the server and the SDK.

The engine raises these in-process; the server maps each type to one gRPC
status code (see :mod:`hessd.status_codes`) and the SDK re-raises the same type
from the status it receives, so a caller writes the same ``except`` clause for
``hessd_server.hessian(...)`` and ``hessd.Client(...).hessian(...)``.
"""

from __future__ import annotations


class HessdError(Exception):
    """Base of every error hessd raises on purpose.

    Attributes:
        message: what went wrong and how to fix it.
        field: the request field the error is about (``"x"``, ``"wrt"``,
            ``"output_weights"``...), or ``None`` when it concerns no single field.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgumentError(HessdError, ValueError):
    """A request the server could never answer as sent; change the request."""


class ShapeError(InvalidArgumentError):
    """An input has the wrong rank or shape for the model."""


class DtypeError(InvalidArgumentError):
    """An input has a dtype hessd cannot differentiate (it must be floating point)."""


class UnknownInputError(InvalidArgumentError):
    """``wrt`` (or an input name) names no input of the model."""


class OutputWeightsError(InvalidArgumentError):
    """``output_weights`` does not have shape (K,) or (B, K)."""


class PrecisionError(InvalidArgumentError):
    """``precision`` is not one of the supported values, or the model cannot run at it."""


class TensorEncodingError(InvalidArgumentError):
    """A wire tensor's byte count does not match its shape and dtype, or its dtype is unknown."""


class ModelLoadError(InvalidArgumentError):
    """``load_model`` could not load the given source."""


class ModelNotFoundError(HessdError, LookupError):
    """No model of that name (and version) is served."""


class ResultTooLargeError(HessdError):
    """The estimated result exceeds the configured byte limit; nothing was computed."""


class OutOfMemoryError(HessdError):
    """The computation ran out of memory; nothing was returned. Retry later, or send a smaller batch."""


class BatchDependenceError(HessdError):
    """Per-example blocks were asked of a model whose examples influence each other.

    Such a model has no per-example Hessian; ask for ``full=True`` instead.
    """


class UnavailableError(HessdError):
    """The server is not ready yet, is shutting down, or is overloaded (its queue of
    requests is full); retry later, with backoff, or elsewhere."""


class UnauthenticatedError(HessdError, PermissionError):
    """The call carried no valid token (``authorization: Bearer <token>`` metadata)."""


class DeadlineExceededError(HessdError, TimeoutError):
    """The call's deadline passed before the result was ready."""


class CancelledError(HessdError):
    """The call was cancelled."""


class InternalError(HessdError):
    """An unexpected failure; the server log holds the details."""


class SharedMemoryError(HessdError):
    """Shared memory cannot be used: it is off on the server, or the server holds
    as many regions as it allows. The SDK then sends results over the wire."""


class InvalidSharedMemoryError(SharedMemoryError, InvalidArgumentError):
    """A shared-memory name, size, key or location is malformed or out of bounds."""


class SharedMemoryNotFoundError(SharedMemoryError, LookupError):
    """No such shared-memory region exists on the server's host, or none is registered by that name."""


class SharedMemoryPermissionError(SharedMemoryError, PermissionError):
    """The key does not match the region's, or the caller is not on the server's host."""


class SharedMemoryExistsError(SharedMemoryError):
    """A region of that name is registered already."""


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
        SharedMemoryError,
        InvalidSharedMemoryError,
        SharedMemoryNotFoundError,
        SharedMemoryPermissionError,
        SharedMemoryExistsError,
    )
}
"""Every exception type by class name; the SDK uses it to re-raise the exact type."""

__all__ = [*ERROR_TYPES]
