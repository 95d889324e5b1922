"""Stopping engine work whose caller has gone.

A server runs each engine call inside :func:`cancellable`, with a
:class:`Cancellation` it sets when the call's RPC is cancelled or its deadline
passes. The engine calls :func:`check_cancelled` between the steps of a call
(before tracing, before the XLA compile and first run of a new function,
before each computation), so abandoned work stops at the next step. A running
TensorFlow computation itself cannot be interrupted: it finishes, and its
result is discarded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from hessd.errors import CancelledError, DeadlineExceededError

_current = threading.local()


class Cancellation:
    """A flag, set once, with the reason its call was given up.

    Nothing waits on it, so it is a plain attribute (one per engine call, made on
    the event loop): setting it from one thread and reading it from another is safe.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        """``"deadline"`` or ``"cancelled"`` once set, else ``None``."""

    def set(self, reason: str) -> None:
        """Give the call up for ``reason`` (``"deadline"`` or ``"cancelled"``)."""
        self.reason = reason

    def is_set(self) -> bool:
        return self.reason is not None


@contextlib.contextmanager
def cancellable(cancellation: Cancellation) -> Iterator[None]:
    """Make ``cancellation`` the one :func:`check_cancelled` consults on this thread, for the block."""
    previous = getattr(_current, "cancellation", None)
    _current.cancellation = cancellation
    try:
        yield
    finally:
        _current.cancellation = previous


def check_cancelled() -> None:
    """Raise if the call this thread works for has been given up; a no-op outside :func:`cancellable`.

    Raises:
        DeadlineExceededError: the call's deadline passed.
        CancelledError: the call was cancelled.
    """
    cancellation: Cancellation | None = getattr(_current, "cancellation", None)
    if cancellation is None or not cancellation.is_set():
        return
    if cancellation.reason == "deadline":
        raise DeadlineExceededError("the call's deadline passed; its remaining work was stopped")
    raise CancelledError("the call was cancelled; its remaining work was stopped")
