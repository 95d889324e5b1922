"""What only the blocking flavour does: its channel, stream pump and shared memory.

The blocking SDK (``hessd._sync``) is generated from the asyncio one
(``hessd._async``); the few parts that cannot be translated word for word
live here and in :mod:`hessd._async_flavour`, under the same names.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeAlias

import grpc

from hessd import _protocol, reply_bounds, status_codes
from hessd._protocol import CallMetadata, ChannelOptions, Inputs
from hessd._result_memory import ResultMemory
from hessd.errors import HessdError
from hessd.v1 import hessian_service_pb2 as pb

Channel: TypeAlias = grpc.Channel
UnaryCall: TypeAlias = grpc.UnaryUnaryMultiCallable
InputStream: TypeAlias = Iterable[Inputs]
"""What ``stream`` takes: any iterable of ``x``, consumed lazily (a generator too)."""

StreamEntry: TypeAlias = "HessdError | tuple[pb.StreamHessianResponse | None, reply_bounds.ReplyBound | None, str | None]"
"""One item of a stream: the item's own error, or its reply (``None`` once the call
ended) with the bound its results must keep to (``None`` when no request was sent for it)
and the stream's request id (from the server's initial metadata; ``None`` without one)."""

_END = object()
_ENDED = object()


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: ChannelOptions
) -> grpc.Channel:
    """A blocking channel to ``target``; TLS when ``credentials`` are given."""
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def result_memory(
    channel: grpc.Channel,
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: ChannelOptions,
    metadata: CallMetadata,
) -> ResultMemory:
    """The shared-memory regions of a client, registered over its own ``channel``."""
    return ResultMemory(channel, metadata)


def stream_entries(
    method: grpc.StreamStreamMultiCallable,
    xs: InputStream,
    request_of: Callable[[Inputs], pb.HessianRequest],
    *,
    timeout: float | None,
    metadata: CallMetadata,
) -> Iterator[StreamEntry]:
    """Send ``request_of(x)`` for each of ``xs`` over one StreamHessian ``method`` call,
    and yield a :data:`StreamEntry` per item, in order.

    Requests are made on gRPC's sending thread as it asks for them; the reading side
    learns of each from a queue, so it never waits for a reply that nothing was sent for.
    """
    order: queue.SimpleQueue[object] = queue.SimpleQueue()

    def requests() -> Iterator[pb.HessianRequest]:
        try:
            for x in xs:
                entry, request = _protocol.stream_request(request_of, x)
                order.put(entry)
                if request is not None:
                    yield request
        finally:
            order.put(_END)

    replies = method(requests(), timeout=timeout, metadata=metadata)
    try:
        while (entry := _next_entry(order, replies)) is not _END:
            if isinstance(entry, HessdError):
                yield entry
                continue
            with _protocol.translated_errors():
                reply = next(replies, None)
            request_id = None if reply is None else status_codes.request_id_in(replies.initial_metadata())
            yield reply, (entry if isinstance(entry, reply_bounds.ReplyBound) else None), request_id
        with _protocol.translated_errors():
            _protocol.check_stream_ended(next(replies, None))
    finally:
        replies.cancel()


def _next_entry(order: queue.SimpleQueue[object], replies: Any) -> object:
    """The next entry of ``order`` (the bound of a sent request's reply, an item's error
    or ``_END``); ``_ENDED`` if the call ended while none was coming, so that reading
    its reply raises the call's error instead of waiting forever."""
    while True:
        try:
            return order.get(timeout=_protocol.STREAM_POLL_S)
        except queue.Empty:
            if replies.done():
                return _ENDED
