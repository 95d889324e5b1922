"""The engine's worker threads: a fixed pool of daemon threads.

``concurrent.futures.ThreadPoolExecutor`` threads are joined when the
interpreter exits, so a server whose grace period is over would still wait for
every abandoned engine call to finish. These threads are daemons: once the
server has stopped, the process exits and whatever they still compute is lost.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

_WorkItem = tuple[Future, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class EngineThreadPool(Executor):
    """``threads`` daemon worker threads taking work in submission order.

    Args:
        threads: how many calls run at once.
        name: the threads' name prefix.
    """

    def __init__(self, threads: int, *, name: str = "hessd-engine") -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work_loop, name=f"{name}_{index}", daemon=True)
            for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; its future can be cancelled until a thread takes it up.

        Raises:
            RuntimeError: after :meth:`shutdown`.
        """
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit engine work after shutdown")
            self._work.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; cancel the queued work if ``cancel_futures``; join the threads if ``wait``."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _work_loop(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
            else:
                future.set_result(result)
