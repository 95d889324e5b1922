"""Per-function build locks, kept only while some call holds or waits for one.

A lock lives exactly as long as it is in use, so every call that builds or
waits for the same function shares one lock even when the function is evicted
from the cache in between, and finished builds leave nothing behind.

>>> locks = BuildLocks()
>>> with locks.building("f"):
...     len(locks)
1
>>> (len(locks), locks.waits)
(0, 0)
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class BuildLocks:
    """One lock per key being built; thread-safe.

    Attributes:
        waits: calls that found their key's lock held (another call was building it) and waited.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}
        self.waits = 0

    @contextmanager
    def building(self, key: Hashable) -> Iterator[None]:
        """Hold ``key``'s lock for the body, waiting while another call holds it."""
        with self._guard:
            entry = self._entries.setdefault(key, _Entry())
            entry.users += 1
            if entry.lock.locked():
                self.waits += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._entries[key]

    def __len__(self) -> int:
        """Keys with a call building or waiting."""
        with self._guard:
            return len(self._entries)
