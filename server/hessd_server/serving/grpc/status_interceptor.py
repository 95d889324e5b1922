"""The server's error layer around every call: decoding, auth, statuses, admission, metrics.

Every ``hessd.v1`` handler runs inside :class:`StatusInterceptor`. Its request
bytes are decoded here rather than by gRPC, so bytes that are no valid message
fail INVALID_ARGUMENT (``MalformedRequestError``, reason ``MALFORMED_REQUEST``)
like any other bad request; on a client stream each item is decoded on its
own, and an item that cannot be reaches the handler as its
``MalformedRequestError`` instead of ending the stream. A hessd exception
escaping a handler ends the call with the status that :mod:`hessd.status_codes`
maps it to, details included; any other exception ends it INTERNAL with a
generic message. :class:`~hessd_server.serving.observability.failure_log.FailureLog` logs
both. Calls to a service that needs a bearer token are refused
UNAUTHENTICATED without one, before anything is decoded; calls (but
SharedMemoryService's, which the servicer refuses itself while draining) pass
:class:`~hessd_server.serving.scheduling.admission.Admission`, so a draining server
answers new calls UNAVAILABLE. A handler may return (or yield) a reply already
serialized, as ``bytes``; it goes to gRPC as it is.

Every ``hessd.v1`` call gets a request id (the caller's ``x-request-id`` when it
sent a usable one, else a new one), sent back in the trailing metadata of its
reply, OK or not, and named by every log line written while it runs (see
:mod:`~hessd_server.serving.observability.request_context`). With tracing on, the call
also gets its server span (:mod:`~hessd_server.serving.observability.tracing`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.rpc import status_pb2
from grpc_status import rpc_status

from hessd import status_codes
from hessd.errors import HessdError, InternalError, MalformedRequestError
from hessd.status_codes import REQUEST_ID_KEY
from hessd.v1 import hessian_service_pb2, shared_memory_pb2

from ..observability.failure_log import FailureLog
from ..observability import request_context
from ..observability.metrics import Metrics
from ..observability.request_context import RequestContext
from ..observability.tracing import Tracing
from ..scheduling.admission import Admission
from .auth import ServiceTokens

SERVICE_NAME: str = hessian_service_pb2.DESCRIPTOR.services_by_name["HessianService"].full_name
"""``"hessd.v1.HessianService"``."""

SHARED_MEMORY_SERVICE_NAME: str = shared_memory_pb2.DESCRIPTOR.services_by_name[
    "SharedMemoryService"
].full_name
"""``"hessd.v1.SharedMemoryService"``."""

PACKAGE_PREFIX = "hessd.v1."
"""Services whose names start with this run inside the interceptor's error layer."""

INTERNAL_MESSAGE = "internal error; the server log has the details"
"""What a caller sees of an unexpected server failure."""

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamingBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
Deserializer = Callable[[bytes], Any]


def status_of(error: BaseException) -> status_pb2.Status:
    """The ``google.rpc.Status`` a call failing with ``error`` ends with.

    An exception that is not a ``HessdError`` is a bug: it becomes INTERNAL
    with :data:`INTERNAL_MESSAGE` (the caller logs it, see ``FailureLog``).
    """
    if isinstance(error, HessdError):
        return status_codes.to_status(error)
    return status_codes.to_status(InternalError(INTERNAL_MESSAGE))


def decoded(deserializer: Deserializer, data: bytes) -> Any:
    """``data`` parsed by ``deserializer`` (a message class's ``FromString``).

    Raises:
        MalformedRequestError: the bytes are no valid message of that type.
    """
    try:
        return deserializer(data)
    except Exception as error:  # protobuf's DecodeError, or anything a parser raises on garbage
        raise MalformedRequestError(
            f"the request's {len(data):,} bytes are not a valid message of this method's "
            f"request type ({str(error)[:200]}); send a serialized request message",
            metadata={"request_bytes": len(data)},
        ) from None


async def decoded_items(
    deserializer: Deserializer, items: AsyncIterator[bytes]
) -> AsyncIterator[Any]:
    """Each item of a client stream parsed, or its ``MalformedRequestError`` in its place."""
    async for data in items:
        try:
            yield decoded(deserializer, data)
        except MalformedRequestError as error:
            yield error


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each ``hessd.v1`` handler with decoding, admission, error mapping and metrics,
    and refuses calls without an accepted bearer token to the services that need one.

    Args:
        metrics: where each finished call is counted and timed.
        admission: admits calls, or refuses them UNAVAILABLE while draining.
        failures: where failed calls are logged.
        tokens: which services need which bearer tokens; ``None``: none do.
        tracing: gives each call its server span; ``None``: tracing is off.
    """

    def __init__(
        self,
        metrics: Metrics,
        admission: Admission,
        failures: FailureLog,
        tokens: ServiceTokens | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self._admission = admission
        self._failures = failures
        self._tokens = tokens
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        path = handler_call_details.method
        service, _, method = path.lstrip("/").partition("/")
        if self._tokens is not None:
            try:
                self._tokens.check(service, handler_call_details.invocation_metadata)
            except HessdError as refusal:
                return _same_kind(handler, self._refusing(service, method, refusal))
        known = self._wrapped.get(path)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrapping(service, method, handler)
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _wrapping(
        self, service: str, method: str, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """``handler`` inside the error layer, or as it is for services outside ``hessd.v1``.
        The same wrapped handler serves every call of a method: it is built once."""
        if not service.startswith(PACKAGE_PREFIX):
            return handler
        parse = handler.request_deserializer
        # Shared-memory registrations are no work to drain: they last until the admitted
        # calls that may use them are done (see HessdServer.stop).
        admission = None if service == SHARED_MEMORY_SERVICE_NAME else self._admission
        if handler.unary_unary is not None:
            return _same_kind(handler, self._unary(service, method, handler.unary_unary, parse, admission))
        if handler.unary_stream is not None:
            return _same_kind(
                handler, self._streaming(service, method, handler.unary_stream, admission, parse)
            )
        if handler.stream_stream is not None:
            return _same_kind(
                handler, self._streaming(service, method, handler.stream_stream, admission, None, parse)
            )
        return handler

    def _unary(
        self,
        service: str,
        method: str,
        behavior: UnaryBehavior,
        parse: Deserializer,
        admission: Admission | None,
    ) -> UnaryBehavior:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            call = self._begin(service, method, context)
            code = grpc.StatusCode.OK
            failure: BaseException | None = None
            reply_bytes = 0
            try:
                if admission is not None:
                    admission.admit()
                try:
                    message = decoded(parse, request)
                    call.model = getattr(message, "model_name", "")
                    if call.trace is not None:
                        call.trace.describe(message)
                    reply = await behavior(message, context)
                    if call.trace is not None:
                        reply_bytes = _size(reply)
                    return reply
                finally:
                    if admission is not None:
                        admission.leave()
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:  # the handler ended the call with its own status
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as error:
                failure = error
                status = self._failed(call, error)
                code = status.code
                await context.abort_with_status(status)
            finally:
                self._end(call, code, failure, reply_bytes, time.perf_counter() - started)

        return handle

    def _streaming(
        self,
        service: str,
        method: str,
        behavior: StreamingBehavior,
        admission: Admission | None,
        parse: Deserializer | None,
        parse_items: Deserializer | None = None,
    ) -> StreamingBehavior:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            call = self._begin(service, method, context)
            code = grpc.StatusCode.OK
            failure: BaseException | None = None
            reply_bytes = 0
            try:
                with _admitted(admission):
                    if parse_items is not None:
                        request = decoded_items(parse_items, request)
                        # a stream's items fail in its replies, not its status: the caller
                        # reads the request id of their errors from the initial metadata
                        await context.send_initial_metadata(((REQUEST_ID_KEY, call.request_id),))
                    elif parse is not None:
                        request = decoded(parse, request)
                        call.model = getattr(request, "model_name", "")
                        if call.trace is not None:
                            call.trace.describe(request)
                    async for reply in behavior(request, context):
                        if call.trace is not None:
                            reply_bytes += _size(reply)
                        yield reply
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:  # the handler ended the call with its own status
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as error:
                failure = error
                status = self._failed(call, error)
                code = status.code
                await context.abort_with_status(status)
            finally:
                self._end(call, code, failure, reply_bytes, time.perf_counter() - started)

        return handle

    def _refusing(self, service: str, method: str, refusal: HessdError) -> Callable[..., Any]:
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            call = self._begin(service, method, context)
            status = self._failed(call, refusal)
            self._end(call, status.code, refusal, 0, 0.0)
            await context.abort_with_status(status)

        return refuse

    def _begin(self, service: str, method: str, context: grpc.aio.ServicerContext) -> RequestContext:
        """The call's :class:`RequestContext`, made current for its task, its request id
        set in the reply's trailing metadata (and its server span started, when tracing)."""
        metadata = context.invocation_metadata()
        request_id = request_context.request_id_from(metadata)
        call = RequestContext(request_id, method)
        if self._tracing is not None:
            call.trace = self._tracing.request(service, method, request_id, metadata)
        request_context.CURRENT.set(call)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        return call

    def _end(
        self,
        call: RequestContext,
        code: grpc.StatusCode,
        failure: BaseException | None,
        reply_bytes: int,
        seconds: float,
    ) -> None:
        """Count and time the finished call, and end its span."""
        exemplar = None
        if call.trace is not None:
            reason = failure.reason if isinstance(failure, HessdError) else ""
            call.trace.finish(code, failure, reason, reply_bytes)
            exemplar = call.trace.exemplar()
        self._metrics.observe_request(call.method, code, seconds, exemplar)

    def _failed(self, call: RequestContext, error: Exception) -> grpc.Status:
        """Log ``error`` and return the status its call ends with, the call's request id
        in its trailing metadata."""
        self._failures.record(call.method, error)
        status = rpc_status.to_status(status_of(error))
        return _Status(status.code, status.details, (*status.trailing_metadata, (REQUEST_ID_KEY, call.request_id)))


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    """A ``grpc.Status`` to end a call with: its code, message and trailing metadata."""


def _size(reply: Any) -> int:
    """The bytes of a reply, serialized or not."""
    return len(reply) if isinstance(reply, bytes) else reply.ByteSize()


def _admitted(admission: Admission | None) -> contextlib.AbstractContextManager[None]:
    """The call held as admitted by ``admission``, or not counted when it is ``None``."""
    return contextlib.nullcontext() if admission is None else admission.admitted()


def _same_kind(
    handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s streaming kind running ``behavior`` on the raw request bytes."""
    codecs = {
        "request_deserializer": None,
        "response_serializer": _passing_bytes(handler.response_serializer),
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(behavior, **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behavior, **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behavior, **codecs)
    return grpc.stream_stream_rpc_method_handler(behavior, **codecs)


def _passing_bytes(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    """``serializer``, except that replies already serialized pass as they are."""

    def serialize(reply: Any) -> bytes:
        return reply if isinstance(reply, bytes) or serializer is None else serializer(reply)

    return serialize
