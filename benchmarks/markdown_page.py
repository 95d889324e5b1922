"""The page a benchmark writes with ``--markdown PATH``, one shape for every benchmark.

A page is the benchmark's title, the run's date (UTC), the machine (CPU model, cores,
memory, OS, Python and library versions), the exact command, and then the benchmark's
own tables and notes. Below :data:`HAND_WRITTEN_MARKER` comes the hand-written reading of
the numbers: :func:`write_page` keeps whatever follows the marker in the page it
replaces, so a rerun refreshes the figures without losing their interpretation.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
from collections.abc import Sequence
from pathlib import Path

HAND_WRITTEN_MARKER = (
    "<!-- Hand-written below this line; the benchmark keeps it when it rewrites the page. -->"
)
LIBRARIES = ("tensorflow", "keras", "jax", "jaxlib", "torch", "numpy", "grpcio")


def machine_description() -> list[str]:
    """Markdown bullet lines: the date (UTC), CPU, cores, memory, load, OS, Python and libraries."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return [
        f"- date: {now:%Y-%m-%d %H:%M} UTC",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores ({_usable_cores()} usable by this process), "
        f"{_memory_gib()} RAM; 1-minute load average at start {os.getloadavg()[0]:.2f}",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        "- libraries: " + ", ".join(f"{name} {_version(name)}" for name in LIBRARIES),
    ]


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that reproduces this run, e.g. ``python benchmarks/bench_wire.py --quick``."""
    return shlex.join(["python", f"benchmarks/{script}", *argv])


def render_page(title: str, header: Sequence[str], command: str, body: Sequence[str]) -> str:
    """The generated part of a page: ``# title``, the ``header`` bullets, the command, the ``body``."""
    return "\n".join([f"# {title}", "", *header, f"- command: `{command}`", "", *body]).rstrip("\n") + "\n"


def hand_written_part(page: str) -> str:
    """What follows :data:`HAND_WRITTEN_MARKER` in ``page``; ``""`` when it has no marker."""
    _, marker, rest = page.partition(HAND_WRITTEN_MARKER)
    return rest.strip("\n") if marker else ""


def write_page(path: Path, generated: str) -> None:
    """Write ``generated`` to ``path``, above the marker and the hand-written part ``path`` held."""
    kept = hand_written_part(path.read_text(encoding="utf-8")) if path.exists() else ""
    tail = f"\n{kept}\n" if kept else ""
    path.write_text(f"{generated.rstrip()}\n\n{HAND_WRITTEN_MARKER}\n{tail}", encoding="utf-8")


def publish(page: str, path: Path | None) -> None:
    """Print ``page``, and write it to ``path`` (keeping its hand-written part) when one is given."""
    print(page)
    if path is not None:
        write_page(path, page)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _usable_cores() -> int | str:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            kib = int(meminfo.readline().split()[1])
        return f"{kib / 2**20:.0f} GiB"
    except (OSError, IndexError, ValueError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
