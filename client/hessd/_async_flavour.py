"""What only the asyncio flavour does: its channel, stream pump and shared memory.

``hessd._async`` is the SDK's one hand-written source; ``make sdk`` generates the
blocking ``hessd._sync`` from it. Its calls to this module become calls to
:mod:`hessd._sync_flavour`, which offers the same names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import TypeAlias

import grpc
import grpc.aio

from hessd import _protocol, _sync_flavour, reply_bounds, status_codes
from hessd._protocol import CallMetadata, ChannelOptions, Inputs
from hessd._result_memory import ResultMemory, Slot
from hessd._sync_flavour import StreamEntry
from hessd.errors import HessdError
from hessd.v1 import hessian_service_pb2 as pb

Channel: TypeAlias = grpc.aio.Channel
UnaryCall: TypeAlias = grpc.aio.UnaryUnaryMultiCallable
InputStream: TypeAlias = "Iterable[Inputs] | AsyncIterable[Inputs]"
"""What ``stream`` takes: an iterable or async iterable of ``x``, consumed lazily."""

__all__ = ["Channel", "InputStream", "StreamEntry", "UnaryCall"]

_END = object()
_ENDED = object()


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: ChannelOptions
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``target``; TLS when ``credentials`` are given."""
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


class AsyncResultMemory:
    """:class:`hessd._result_memory.ResultMemory` for an asyncio client.

    A region's registration stream stays open for the region's life and is
    proven with blocking calls, so the regions are registered over a blocking
    channel of their own (same target, credentials and options), on a worker
    thread, never blocking the event loop.
    """

    def __init__(self, channel: grpc.Channel, metadata: CallMetadata) -> None:
        self._channel = channel
        self._memory = ResultMemory(channel, metadata)

    @property
    def refused(self) -> HessdError | None:
        """Why the server refused shared memory; ``None`` while it has not."""
        return self._memory.refused

    async def slot(self, nbytes: int) -> Slot | None:
        """As :meth:`hessd._result_memory.ResultMemory.slot`, registering off the event loop."""
        return await asyncio.to_thread(self._memory.slot, nbytes)

    def reset(self) -> None:
        """As :meth:`hessd._result_memory.ResultMemory.reset`."""
        self._memory.reset()

    def close(self) -> None:
        """Unregister and remove every region, and close the registration channel."""
        self._memory.close()
        self._channel.close()


def result_memory(
    channel: grpc.aio.Channel,
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: ChannelOptions,
    metadata: CallMetadata,
) -> AsyncResultMemory:
    """The shared-memory regions of a client whose calls go over ``channel`` to ``target``."""
    return AsyncResultMemory(_sync_flavour.open_channel(target, credentials, options), metadata)


async def stream_entries(
    method: grpc.aio.StreamStreamMultiCallable,
    xs: InputStream,
    request_of: Callable[[Inputs], pb.HessianRequest],
    *,
    timeout: float | None,
    metadata: CallMetadata,
) -> AsyncIterator[StreamEntry]:
    """Send ``request_of(x)`` for each of ``xs`` over one StreamHessian ``method`` call,
    and yield a :data:`hessd._sync_flavour.StreamEntry` per item, in order.

    A task writes the requests while this generator reads the replies; it learns of
    each request from a queue, so it never waits for a reply that nothing was sent for.
    """
    order: asyncio.Queue[object] = asyncio.Queue()
    call = method(timeout=timeout, metadata=metadata)

    async def send() -> None:
        try:
            async for x in _aiter(xs):
                entry, request = _protocol.stream_request(request_of, x)
                order.put_nowait(entry)
                if request is not None:
                    await call.write(request)
            await call.done_writing()
        finally:
            order.put_nowait(_END)

    sender = asyncio.create_task(send())
    try:
        while (entry := await _next_entry(order, call)) is not _END:
            if isinstance(entry, HessdError):
                yield entry
                continue
            with _protocol.translated_errors():
                reply = await call.read()
            bound = entry if isinstance(entry, reply_bounds.ReplyBound) else None
            if reply is grpc.aio.EOF:
                yield None, bound, None
            else:
                yield reply, bound, status_codes.request_id_in(await call.initial_metadata())
        with _protocol.translated_errors():
            await sender
            reply = await call.read()
        _protocol.check_stream_ended(None if reply is grpc.aio.EOF else reply)
    finally:
        sender.cancel()
        call.cancel()


async def _next_entry(order: asyncio.Queue[object], call: grpc.aio.Call) -> object:
    """The next entry of ``order`` (the bound of a sent request's reply, an item's error
    or ``_END``); ``_ENDED`` if the call ended while none was coming, so that reading
    its reply raises the call's error instead of waiting forever."""
    while True:
        try:
            return await asyncio.wait_for(order.get(), _protocol.STREAM_POLL_S)
        except asyncio.TimeoutError:
            if call.done():
                return _ENDED


async def _aiter(items: InputStream) -> AsyncIterator[Inputs]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
