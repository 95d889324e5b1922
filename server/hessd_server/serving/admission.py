"""Admission of HessianService calls: open until draining starts, with calls in flight counted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from hessd.errors import UnavailableError


class Admission:
    """Admits calls until :meth:`start_draining`, and tells when admitted calls are all done.

    Use from the event loop thread only.
    """

    def __init__(self) -> None:
        self._draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one admitted call for the duration of the block.

        Raises:
            UnavailableError: the server is draining and admits no new calls.
        """
        self.refuse_if_draining()
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        """Admitted calls not yet finished."""
        return self._in_flight

    def refuse_if_draining(self) -> None:
        """Raise once draining has started; an open stream calls it before each new item.

        Raises:
            UnavailableError: the server is draining and takes no new work.
        """
        if self._draining:
            raise UnavailableError(
                "the server is shutting down; retry on another instance", reason="SERVER_DRAINING"
            )

    def start_draining(self) -> None:
        """Admit no new calls from now on."""
        self._draining = True

    async def drained(self) -> None:
        """Return once no admitted call is in flight."""
        await self._idle.wait()
