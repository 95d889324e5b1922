"""Cold start: seconds from launching ``hessd-server`` (the demo model, default
warm-up buckets 1-32) until its health is SERVING, with the per-example strategy
chosen by rule (the default: the reference and the structural strategy compiled
and checked, nothing timed), pinned to ``pfor``, and read from a tuning record
(``--tuning-cache``, written by one untimed start first, so nothing is tuned),
the three taking turns.

Each start is a fresh process, so each pays Python's and TensorFlow's imports,
the model's load, the batch-independence probe, and every warmed bucket's
compiles. The server's own log line gives the split between load and warm-up.

Usage: ``python benchmarks/bench_cold_start.py [--runs N] [--markdown PATH]``
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hessd_server.serving.server_process import ServerProcess

from markdown_page import command_line, machine_description, render_page, write_page

DEFAULT, RECORD = "by rule (default)", "tuning record read (`--tuning-cache`)"
VARIANTS: dict[str, tuple[str, ...]] = {
    DEFAULT: (),
    "`--strategy pfor`": ("--strategy", "pfor"),
    RECORD: ("--tuning-cache",),
}
"""Each variant's flags; the record variant's directory is appended."""
TARGET_S = 10.0
RECORD_TARGET_S = 6.0
TITLE = "Cold start to SERVING"


def start_seconds(flags: Sequence[str]) -> tuple[float, float]:
    """Seconds until one fresh server is SERVING, and its logged warm-up seconds."""
    began = time.perf_counter()
    with ServerProcess(*flags, "--log-level", "INFO") as server:
        elapsed = time.perf_counter() - began
        found = re.search(r"warm-up ([\d.]+)s", server.output())
    return elapsed, float(found.group(1)) if found else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="starts of each variant (default %(default)s)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report as a page to PATH")
    args = parser.parse_args(argv)
    header = machine_description()
    print("\n".join(header), flush=True)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="hessd-tuning-") as cache:
        flags_of = {name: (*flags, cache) if name == RECORD else flags for name, flags in VARIANTS.items()}
        start_seconds(flags_of[RECORD])  # writes the tuning records the timed starts read
        for run in range(args.runs):
            for name, flags in flags_of.items():
                times[name].append(start_seconds(flags))
                print(f"run {run + 1}, {name}: {times[name][-1][0]:.2f} s", flush=True)
    command = command_line("bench_cold_start.py", sys.argv[1:] if argv is None else argv)
    lines = [
        "| strategy | starts | median to SERVING (s) | range (s) | median warm-up (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in times.items():
        total = [t for t, _ in runs]
        warmup = [w for _, w in runs]
        lines.append(
            f"| {name} | {len(runs)} | {statistics.median(total):.2f} | {min(total):.2f}–{max(total):.2f} "
            f"| {statistics.median(warmup):.2f} |"
        )
    slowest = max(t for t, _ in times[DEFAULT])
    slowest_record = max(t for t, _ in times[RECORD])
    lines += [
        "",
        f"- Target: the demo server SERVING within {TARGET_S:g} s by default: slowest start "
        f"{slowest:.2f} s, {'met' if slowest <= TARGET_S else 'NOT met'}.",
        f"- Target: within {RECORD_TARGET_S:g} s when a tuning record exists: slowest start "
        f"{slowest_record:.2f} s, {'met' if slowest_record <= RECORD_TARGET_S else 'NOT met'}.",
        f"- 1-minute load average at end {os.getloadavg()[0]:.2f}",
    ]
    page = render_page(TITLE, header, command, lines)
    print(page)
    if args.markdown:
        write_page(args.markdown, page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
