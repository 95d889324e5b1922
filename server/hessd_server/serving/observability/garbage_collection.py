"""The server and Python's cyclic garbage collector: frozen long-lived objects, timed pauses.

A process serving TensorFlow models holds a few hundred thousand long-lived
Python objects: TensorFlow and Keras themselves, the models, their traced and
compiled functions. CPython's full collection walks every one of them while it
holds the interpreter lock, so each stalls every call in flight, event loop
and engine threads alike: about 0.2 s, about every 10 s under load, on the
reference machine (see docs/benchmarks/wire.md).

:class:`HeapFreeze` moves the objects alive once the models are loaded into
CPython's permanent generation (``gc.freeze``), which collections skip, so
later full collections walk only what was made since. A frozen object that
becomes garbage inside a reference cycle is not freed while frozen (objects
freed by reference counting, most of them, are freed as usual), so after the
served versions change the server refreezes with the permanent generation
thawed first: one full collection then frees the unloaded version's cycles.
Compiled functions that were frozen and are later evicted from a model's cache
(``max_compiled_functions``) stay until the next refreeze: memory that was in
use when the freeze was made, so it never grows past that.

The freeze is process-wide; servers in one process share it, and it is lifted
when the last of them stops.

:class:`PauseTimer` times every collection into ``hessd_gc_pause_seconds``.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_holders = 0
"""Servers in this process holding the freeze."""


class HeapFreeze:
    """One server's hold on the process-wide freeze of long-lived objects."""

    def __init__(self) -> None:
        self._held = False
        self._lifted = False

    def settle(self) -> tuple[int, float]:
        """Thaw the permanent generation, collect everything unreachable, and freeze
        what is left; the server holds the freeze from then on. Blocks for one full
        collection (fractions of a second with TensorFlow loaded): call it off the
        event loop, after loading or unloading models. Does nothing once lifted.

        Returns:
            The objects frozen, and the seconds taken.
        """
        global _holders
        with _lock:
            if self._lifted:
                return 0, 0.0
            started = time.perf_counter()
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            if not self._held:
                self._held = True
                _holders += 1
            return gc.get_freeze_count(), time.perf_counter() - started

    def lift(self) -> None:
        """Give up this server's hold for good; the last holder thaws the permanent generation."""
        global _holders
        with _lock:
            self._lifted = True
            if not self._held:
                return
            self._held = False
            _holders -= 1
            if _holders == 0:
                gc.unfreeze()


class PauseTimer:
    """Reports the duration of every garbage collection in this process, by generation.

    Args:
        observe: called with the generation (0, 1 or 2) and seconds of each collection.
    """

    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self._observe = observe
        self._started = 0.0

    def start(self) -> None:
        """Begin timing collections."""
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def stop(self) -> None:
        """Stop timing collections."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._observe(info["generation"], time.perf_counter() - self._started)
