"""Engine calls off the event loop, dropping queued work whose RPC is already gone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc.aio

from hessd.errors import CancelledError, DeadlineExceededError

from .metrics import Metrics

T = TypeVar("T")


class EngineExecutor:
    """Runs blocking engine functions on a thread pool for asyncio handlers.

    A call waits in the pool's queue while every worker is busy. When a worker
    takes it up, it first checks the RPC: if the deadline has passed or the
    client cancelled, the engine is not called and the drop is counted.

    Args:
        pool: the worker threads; its size bounds the engine calls running at once.
        metrics: where dropped calls are counted.
    """

    def __init__(self, pool: ThreadPoolExecutor, metrics: Metrics) -> None:
        self._pool = pool
        self._metrics = metrics

    async def run(
        self,
        context: grpc.aio.ServicerContext,
        function: Callable[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """``function(*args, **kwargs)`` on a worker thread, for the RPC of ``context``.

        Raises:
            DeadlineExceededError: the RPC's deadline passed before a worker was free.
            CancelledError: the RPC was cancelled before a worker was free.
        """
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        gone = threading.Event()

        def job() -> T:
            self._metrics.call_dequeued()
            if gone.is_set():
                self._metrics.count_dropped("cancelled")
                raise CancelledError("the call was cancelled before its work started")
            if deadline is not None and time.monotonic() >= deadline:
                self._metrics.count_dropped("deadline")
                raise DeadlineExceededError("the call's deadline passed before its work started")
            return function(*args, **kwargs)

        self._metrics.call_queued()
        future = self._pool.submit(job)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            gone.set()
            if future.cancel():
                self._metrics.call_dequeued()
                self._metrics.count_dropped("cancelled")
            raise

    async def run_started(self, function: Callable[[], T]) -> T:
        """``function()`` on a worker thread, for work whose RPCs the caller has
        checked already (the batcher's batches, which serve several RPCs)."""
        return await asyncio.wrap_future(self._pool.submit(function))
