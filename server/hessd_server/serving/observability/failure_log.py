"""How failed calls are logged: a bad request as one rate-limited line, a server fault in full.

A caller's mistake (any ``HessdError`` but ``InternalError``) is logged as one
INFO line naming the method, the status code and the reason, at most
``lines_per_window`` lines per ``window_seconds``; the lines held back are
counted and reported with the next line that is written. Anything else is a
server fault and is logged at ERROR with its traceback, never held back.

>>> import logging
>>> ticks = iter(range(100))
>>> log = FailureLog(logging.getLogger("doc"), lines_per_window=2, window_seconds=10,
...                  clock=lambda: next(ticks))
>>> [log.admit() for _ in range(4)]
[True, True, False, False]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from hessd import status_codes
from hessd.errors import HessdError, InternalError


class FailureLog:
    """Logs failed calls on ``logger``; thread-safe.

    Args:
        logger: where lines go.
        lines_per_window: bad-request lines written per window at most.
        window_seconds: the window's length.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        lines_per_window: int = 20,
        window_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._lines_per_window = lines_per_window
        self._window_seconds = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = float("-inf")
        self._written = 0
        self._held_back = 0

    def record(self, method: str, error: BaseException) -> None:
        """Log the failure of one call (or stream item) of ``method`` with ``error``."""
        if not isinstance(error, HessdError) or isinstance(error, InternalError):
            self._logger.error("%s failed unexpectedly", method, exc_info=error)
            return
        if not self._logger.isEnabledFor(logging.INFO):
            return
        held_back = self._take_held_back() if self.admit() else None
        if held_back is None:
            return
        code = status_codes.status_code(error).name
        suffix = f" ({held_back} more not logged)" if held_back else ""
        self._logger.info(
            "%s refused %s %s: %s%s",
            method,
            code,
            error.reason,
            error.message.splitlines()[0][:200] if error.message else "",
            suffix,
        )

    def admit(self) -> bool:
        """Whether one more line may be written now; counts it, or counts it held back."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self._window_seconds:
                self._window_start = now
                self._written = 0
            if self._written < self._lines_per_window:
                self._written += 1
                return True
            self._held_back += 1
            return False

    def _take_held_back(self) -> int:
        with self._lock:
            held_back, self._held_back = self._held_back, 0
            return held_back
