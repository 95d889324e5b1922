"""Engine calls off the event loop: queued work of a gone RPC is dropped, running work is stopped
at its next step, and both are counted."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from hessd.errors import CancelledError, DeadlineExceededError

from ...engine.cancellation import Cancellation, cancellable
from ..observability.metrics import Metrics

T = TypeVar("T")

DEADLINE_SLACK_S = 0.25
"""A call whose RPC ends within this many seconds of its deadline ended for its
deadline, not because it was cancelled: the caller's own deadline ends the call a
moment before the server's copy of it passes (that copy starts when the request
arrives), so which one fires first tells nothing."""


def end_reason(deadline: float | None, now: float) -> str:
    """Why a call whose RPC ended at ``now`` ended: ``"deadline"`` when ``now`` is at
    most :data:`DEADLINE_SLACK_S` before its ``deadline`` (or past it), else
    ``"cancelled"``. Both are read on the same monotonic clock; ``deadline`` is None
    for a call without one."""
    return "deadline" if deadline is not None and now >= deadline - DEADLINE_SLACK_S else "cancelled"


class Deadline(Protocol):
    """What scheduling needs of a call's transport: the time it has left.

    A gRPC ``ServicerContext`` is one; so is any object with this method.
    """

    def time_remaining(self) -> float | None:
        """Seconds until the call's deadline, or ``None`` when it has none."""


class EngineExecutor:
    """Runs blocking engine functions on a thread pool for asyncio handlers.

    A call waits in the pool's queue while every worker is busy. When a worker
    takes it up, it first checks the RPC: if the deadline has passed or the
    client cancelled, the engine is not called and the drop is counted
    (``hessd_dropped_engine_calls_total{reason}``). An RPC that ends while its
    engine call runs leaves that call *abandoned*: it is counted
    (``hessd_abandoned_engine_calls_total{reason}``) and the engine stops it at
    its next step (see :mod:`hessd_server.engine.cancellation`), raising
    ``DeadlineExceededError`` or ``CancelledError`` by that reason; a
    computation already running finishes first and its result is discarded.
    An RPC that ends within :data:`DEADLINE_SLACK_S` of its deadline ended for
    its deadline (:func:`end_reason`).

    Args:
        pool: the worker threads; its size bounds the engine calls running at once.
        metrics: where dropped and abandoned calls are counted.
        clock: the monotonic clock deadlines are measured on (``time.monotonic``);
            tests pass their own to expire deadlines without waiting.
    """

    def __init__(
        self, pool: Executor, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self.clock = clock

    async def run(
        self,
        context: Deadline,
        function: Callable[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """``function(*args, **kwargs)`` on a worker thread, for the call whose deadline ``context`` tells.

        Raises:
            DeadlineExceededError: the RPC's deadline passed before a worker was free.
            CancelledError: the RPC was cancelled before a worker was free.
        """
        call = _EngineCall(self.clock, context)

        def job() -> T:
            self._metrics.call_dequeued()
            reason = call.start()
            if reason is not None:
                self._metrics.count_dropped(reason)
                if reason == "deadline":
                    raise DeadlineExceededError("the call's deadline passed before its work started")
                raise CancelledError("the call was cancelled before its work started")
            with cancellable(call.cancellation):
                return function(*args, **kwargs)

        self._metrics.call_queued()
        future = self._pool.submit(job)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            reason = call.end_reason()
            started = call.give_up(reason)
            if future.cancel():
                self._metrics.call_dequeued()
                self._metrics.count_dropped(reason)
            elif started:
                self._metrics.count_abandoned(reason)
            raise

    async def run_started(self, function: Callable[[], T]) -> T:
        """``function()`` on a worker thread, for work whose RPCs the caller has
        checked already (the batcher's batches, which serve several RPCs)."""
        return await asyncio.wrap_future(self._pool.submit(function))


class _EngineCall:
    """One engine call's deadline and state: queued, then started or dropped; given up or not."""

    def __init__(self, clock: Callable[[], float], context: Deadline) -> None:
        self._clock = clock
        now = clock()
        remaining = context.time_remaining()
        self._deadline = None if remaining is None else now + remaining
        self._lock = threading.Lock()
        self._started = False
        self.cancellation = Cancellation()

    def expired(self) -> bool:
        """Whether the RPC's deadline has passed."""
        return self._deadline is not None and self._clock() >= self._deadline

    def end_reason(self) -> str:
        """Why the RPC, ending now, ended: ``"deadline"`` or ``"cancelled"`` (:func:`end_reason`)."""
        return end_reason(self._deadline, self._clock())

    def start(self) -> str | None:
        """Mark the call started, unless it is given up or expired; then return why not."""
        with self._lock:
            if self.cancellation.is_set():
                return self.cancellation.reason
            if self.expired():
                return "deadline"
            self._started = True
            return None

    def give_up(self, reason: str) -> bool:
        """Mark the call given up for ``reason``; return whether its work had started."""
        with self._lock:
            self.cancellation.set(reason)
            return self._started
