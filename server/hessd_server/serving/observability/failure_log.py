"""How failed calls are logged: a bad request as one rate-limited line, a server fault in full, once per window.

A caller's mistake (any ``HessdError`` but ``InternalError``) is logged as one
INFO line naming the method, the status code and the reason, at most
``lines_per_window`` lines per ``window_seconds``; the lines held back are
counted and reported with the next line that is written. Anything else is a
server fault, logged at ERROR with its traceback once per *fingerprint* (the
method, the exception's type and the place it was raised) per
``window_seconds``: the same fault again within the window is only counted,
and the count is reported with the next traceback of that fingerprint. So a
caller who can trigger a fault cannot fill the log, and a bad-request flood
cannot hide a fault.

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
import traceback
from collections import OrderedDict
from collections.abc import Callable

from hessd import status_codes
from hessd.errors import HessdError, InternalError

MAX_FAULT_FINGERPRINTS = 1024
"""Fault fingerprints remembered at most; the least recently logged is forgotten first."""

Fingerprint = tuple[str, str, str]
"""(method, exception type, "file:line" where it was raised)."""


class FailureLog:
    """Logs failed calls on ``logger``; thread-safe.

    Args:
        logger: where lines go.
        lines_per_window: bad-request lines written per window at most.
        window_seconds: the window's length, for bad requests and for each fault fingerprint.
        clock: monotonic seconds; an attribute, so a test can swap it.
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
        self.window_seconds = window_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._window_start = float("-inf")
        self._written = 0
        self._held_back = 0
        self._faults: OrderedDict[Fingerprint, tuple[float, int]] = OrderedDict()
        """Fingerprint -> (when its window started, how many were held back since)."""

    def record(self, method: str, error: BaseException) -> None:
        """Log the failure of one call (or stream item) of ``method`` with ``error``."""
        if not isinstance(error, HessdError) or isinstance(error, InternalError):
            self._record_fault(method, error)
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
            extra={"code": code, "reason": error.reason},
        )

    def admit(self) -> bool:
        """Whether one more line may be written now; counts it, or counts it held back."""
        with self._lock:
            now = self.clock()
            if now - self._window_start >= self.window_seconds:
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

    def _record_fault(self, method: str, error: BaseException) -> None:
        """Log ``error`` with its traceback if its fingerprint's window allows, else count it."""
        fingerprint = fingerprint_of(method, error)
        with self._lock:
            now = self.clock()
            known = self._faults.get(fingerprint)
            if known is not None and now - known[0] < self.window_seconds:
                self._faults[fingerprint] = (known[0], known[1] + 1)
                return
            held_back = 0 if known is None else known[1]
            self._faults.pop(fingerprint, None)
            self._faults[fingerprint] = (now, 0)
            if len(self._faults) > MAX_FAULT_FINGERPRINTS:
                self._faults.popitem(last=False)
        suffix = f" ({held_back} more like it not logged)" if held_back else ""
        self._logger.error(
            "%s failed unexpectedly%s",
            method,
            suffix,
            exc_info=error,
            extra={"code": "INTERNAL", "reason": InternalError.default_reason},
        )


def fingerprint_of(method: str, error: BaseException) -> Fingerprint:
    """What makes two faults the same: the method, the exception's type and the
    innermost frame of its traceback (never its message, which may carry caller input)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return method, f"{type(error).__module__}.{type(error).__qualname__}", where
