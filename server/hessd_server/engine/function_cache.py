"""A model's compiled functions, bounded: the least recently used is evicted first.

>>> cache = FunctionCache(capacity=2)
>>> cache.put("a", len), cache.put("b", abs), cache.get("a") is len
([], [], True)
>>> cache.put("c", min)
['b']
>>> (cache.get("b"), len(cache), cache.evictions)
(None, 2, 1)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any


class FunctionCache:
    """Compiled functions by key, at most ``capacity`` of them; thread-safe.

    Args:
        capacity: how many functions are kept; putting one more evicts the
            least recently used (got or put) one.

    Attributes:
        evictions: functions evicted so far.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._functions: OrderedDict[Hashable, Callable[..., Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: Hashable) -> Callable[..., Any] | None:
        """The function cached under ``key``, now the most recently used, or ``None``."""
        with self._lock:
            function = self._functions.get(key)
            if function is not None:
                self._functions.move_to_end(key)
            return function

    def put(self, key: Hashable, function: Callable[..., Any]) -> list[Hashable]:
        """Cache ``function`` under ``key``, evicting the least recently used beyond capacity.

        Returns the keys evicted, oldest first.
        """
        evicted: list[Hashable] = []
        with self._lock:
            self._functions[key] = function
            self._functions.move_to_end(key)
            while len(self._functions) > self._capacity:
                evicted.append(self._functions.popitem(last=False)[0])
                self.evictions += 1
        return evicted

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is cached; does not count as a use."""
        with self._lock:
            return key in self._functions

    def __iter__(self) -> Iterator[Hashable]:
        """The cached keys, least recently used first, as they were when called; not a use."""
        with self._lock:
            return iter(list(self._functions))

    def __len__(self) -> int:
        with self._lock:
            return len(self._functions)
