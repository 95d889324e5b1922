"""Admission of HessianService calls: open until draining starts, with calls in flight counted,
and the arrival of the latest call and the latest moment two were in flight noted.

An open stream is one call in flight for as long as it lasts; :meth:`Admission.until_draining`
ends it with UNAVAILABLE as soon as draining starts, even while it waits for its caller's
next item, so an idle stream never holds a shutdown for its whole grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import TypeVar

from hessd.errors import UnavailableError

T = TypeVar("T")


class Admission:
    """Admits calls until :meth:`start_draining`, and tells when admitted calls are all done.

    Use from the event loop thread only.
    """

    def __init__(self) -> None:
        self._draining = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_arrival = -math.inf
        self._last_concurrent = -math.inf

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one admitted call for the duration of the block.

        Raises:
            UnavailableError: the server is draining and admits no new calls.
        """
        self.admit()
        try:
            yield
        finally:
            self.leave()

    def admit(self) -> None:
        """Count one more admitted call; :meth:`leave` must follow once it is done. The
        interceptor's per-call form of :meth:`admitted`.

        Raises:
            UnavailableError: the server is draining and admits no new calls.
        """
        self.refuse_if_draining()
        self._in_flight += 1
        if self._in_flight > 1:
            self._last_concurrent = time.monotonic()
        self._idle.clear()

    def leave(self) -> None:
        """One admitted call is done."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        """Admitted calls not yet finished."""
        return self._in_flight

    def alone_for(self, seconds: float) -> bool:
        """Whether at most one call is in flight now and no two have been for ``seconds``."""
        return self._in_flight <= 1 and time.monotonic() - self._last_concurrent >= seconds

    def refuse_if_draining(self) -> None:
        """Raise once draining has started; an open stream calls it before each new item.

        Raises:
            UnavailableError: the server is draining and takes no new work.
        """
        self._last_arrival = time.monotonic()
        if self._draining.is_set():
            raise UnavailableError(
                "the server is shutting down; retry on another instance", reason="SERVER_DRAINING"
            )

    def start_draining(self) -> None:
        """Admit no new calls from now on, and end the streams waiting for items."""
        self._draining.set()

    async def until_draining(self, items: AsyncIterable[T]) -> AsyncIterator[T]:
        """A stream's ``items``, each checked in (see :meth:`refuse_if_draining`).

        Raises:
            UnavailableError: draining started, before the next item arrived or while
                waiting for it; the item being answered, if any, was answered first.
        """
        iterator = aiter(items)
        draining = asyncio.ensure_future(self._draining.wait())
        following: asyncio.Future[T] | None = None
        try:
            while True:
                self.refuse_if_draining()
                following = asyncio.ensure_future(anext(iterator))
                await asyncio.wait((following, draining), return_when=asyncio.FIRST_COMPLETED)
                self.refuse_if_draining()
                try:
                    item = following.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            draining.cancel()
            if following is not None:
                following.cancel()

    async def drained(self) -> None:
        """Return once no admitted call is in flight."""
        await self._idle.wait()

    async def quiet(self, period: float) -> None:
        """Return once no call (or stream item) has arrived, admitted or refused, for
        ``period`` seconds."""
        while (waited := time.monotonic() - self._last_arrival) < period:
            await asyncio.sleep(period - waited)
