"""The server process's C allocator: freed result buffers are kept for reuse.

A large result passes through several buffers of its size on its way out
(the engine's output, its copy into numpy, reply or chunk bytes). glibc's
malloc hands buffers this large back to the kernel when they are freed: it
maps them afresh (``mmap``), deletes the heaps of worker-thread arenas once
empty, and trims the main heap. The next call then faults every page in
again, and the kernel zeroes each one first; for a 16.8 MB Hessian this
page zeroing cost more than the copies themselves (see docs/benchmarks/transfer.md's
breakdown of large results).

:func:`retain_freed_memory` asks glibc to keep such memory: one arena for all
threads, buffers up to 32 MiB (glibc's largest threshold) taken from the
heap, and up to :data:`RETAINED_BYTES` of free heap kept mapped. The server's
resident memory then stays near its peak of recent calls instead of falling
back between them. A ``GLIBC_TUNABLES`` environment variable that sets any
``glibc.malloc`` tunable takes precedence: the process is then left as it is.
"""

from __future__ import annotations

import ctypes
import os

RETAINED_BYTES = 256 << 20
"""Free heap memory kept mapped before glibc trims it."""

HEAP_ALLOCATION_BYTES = 32 << 20
"""Allocations up to this size come from the heap, not from fresh mappings."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def retain_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed large buffers; whether it was set.

    False on a C library without ``mallopt`` (musl accepts and ignores it, so
    also False there) and when ``GLIBC_TUNABLES`` already sets malloc
    tunables. Call it once, early: threads that allocated before keep their
    arenas.
    """
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_THRESHOLD, HEAP_ALLOCATION_BYTES),
        (_M_TRIM_THRESHOLD, RETAINED_BYTES),
    )
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


__all__ = ["HEAP_ALLOCATION_BYTES", "RETAINED_BYTES", "retain_freed_memory"]
