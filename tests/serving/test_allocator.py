"""The server's C allocator keeps freed large buffers for reuse: one arena for all
threads, and result-sized buffers from the heap instead of fresh mappings, as
glibc's own ``malloc_info`` report shows."""

from __future__ import annotations

import platform
import re
import subprocess
import sys

import pytest

import hessd_server.serving.observability.allocator as allocator

pytestmark = pytest.mark.slow  # child processes that import TensorFlow are the point here

_ARENAS_AND_MAPPINGS = """
import ctypes, importlib.util, os, sys, tempfile, threading
spec = importlib.util.spec_from_file_location("allocator", sys.argv[1])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
if sys.argv[2] == "retain":
    assert allocator.retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
held = []
worker = threading.Thread(target=lambda: held.append(libc.malloc(16 << 20)))  # a result's size
worker.start()
worker.join()
path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
report = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, report)
libc.fclose(report)
print(open(path).read())
"""


def _malloc_info(mode: str) -> tuple[int, int]:
    """(arenas, bytes in fresh mappings) after a worker thread allocates 16 MiB."""
    completed = subprocess.run(
        [sys.executable, "-c", _ARENAS_AND_MAPPINGS, allocator.__file__, mode],
        capture_output=True, text=True, check=True, timeout=60,
    )
    report = completed.stdout
    arenas = len(re.findall(r"<heap nr=", report))
    mapped = int(re.search(r'<total type="mmap" count="\d+" size="(\d+)"/>', report).group(1))
    return arenas, mapped


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
def test_threads_share_one_arena_and_result_sized_buffers_come_from_the_heap() -> None:
    arenas, mapped = _malloc_info("leave")
    assert arenas == 2 and mapped >= 16 << 20, "glibc's defaults: an arena per thread, 16 MiB mapped"
    arenas, mapped = _malloc_info("retain")
    assert arenas == 1 and mapped < 16 << 20


def test_malloc_tunables_of_the_environment_take_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert not allocator.retain_freed_memory()
