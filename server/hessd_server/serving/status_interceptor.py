"""The server's error layer around every hessd call: statuses, admission, metrics.

Every HessianService and SharedMemoryService handler runs inside :class:`StatusInterceptor`. A hessd
exception escaping a handler ends the call with the status that
:mod:`hessd.status_codes` maps it to, details included; any other exception is
logged with its traceback and ends the call INTERNAL with a generic message.
Calls pass :class:`~hessd_server.serving.admission.Admission` first, so a draining
server answers new calls UNAVAILABLE. A handler may return (or yield) a reply
already serialized, as ``bytes``; it goes to gRPC as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.rpc import status_pb2
from grpc_status import rpc_status

from hessd import status_codes
from hessd.errors import HessdError, InternalError
from hessd.v1 import hessian_service_pb2, shared_memory_pb2

from .admission import Admission
from .metrics import Metrics

_log = logging.getLogger(__name__)

SERVICE_NAME: str = hessian_service_pb2.DESCRIPTOR.services_by_name["HessianService"].full_name
"""``"hessd.v1.HessianService"``."""

SHARED_MEMORY_SERVICE_NAME: str = shared_memory_pb2.DESCRIPTOR.services_by_name[
    "SharedMemoryService"
].full_name
"""``"hessd.v1.SharedMemoryService"``."""

_SERVICE_NAMES = (SERVICE_NAME, SHARED_MEMORY_SERVICE_NAME)

INTERNAL_MESSAGE = "internal error; the server log has the details"
"""What a caller sees of an unexpected server failure."""

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamingBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def status_of(error: Exception) -> status_pb2.Status:
    """The ``google.rpc.Status`` a call failing with ``error`` ends with.

    An exception that is not a ``HessdError`` is a bug: it is logged with its
    traceback and becomes INTERNAL with :data:`INTERNAL_MESSAGE`.
    """
    if isinstance(error, HessdError):
        return status_codes.to_status(error)
    _log.error("unexpected error in a HessianService call", exc_info=error)
    return status_codes.to_status(InternalError(INTERNAL_MESSAGE))


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each HessianService handler with admission, error mapping and metrics.

    Args:
        metrics: where each finished call is counted and timed.
        admission: admits calls, or refuses them UNAVAILABLE while draining.
    """

    def __init__(self, metrics: Metrics, admission: Admission) -> None:
        self._metrics = metrics
        self._admission = admission

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or service not in _SERVICE_NAMES:
            return handler
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": _passing_bytes(handler.response_serializer),
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), **codecs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream), **codecs
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, handler.stream_stream), **codecs
        )

    def _unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                with self._admission.admitted():
                    return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                status = rpc_status.to_status(status_of(error))
                code = status.code
                await context.abort_with_status(status)
            finally:
                self._metrics.observe_request(method, code, time.perf_counter() - started)

        return handle

    def _streaming(self, method: str, behavior: StreamingBehavior) -> StreamingBehavior:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                with self._admission.admitted():
                    async for reply in behavior(request, context):
                        yield reply
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                status = rpc_status.to_status(status_of(error))
                code = status.code
                await context.abort_with_status(status)
            finally:
                self._metrics.observe_request(method, code, time.perf_counter() - started)

        return handle


def _passing_bytes(serializer: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``serializer``, except that replies already serialized pass as they are."""

    def serialize(reply: Any) -> bytes:
        return reply if isinstance(reply, bytes) else serializer(reply)

    return serialize
