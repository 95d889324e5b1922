"""Cold start: seconds from launching ``hessd-server`` (the demo model, default
warm-up buckets 1-32) until its health is SERVING, with the per-example strategy
chosen by rule (the default: the reference and the structural strategy compiled
and checked, nothing timed), pinned to ``pfor``, read from a tuning record in
``--tuning-cache`` (written by one untimed start first, so nothing is tuned), and
read from the records beside the model version in a repository (written by
``hessd-server --write-tuning-records``), the four taking turns.

Each start is a fresh process, so each pays Python's and TensorFlow's imports,
the model's load, the batch-independence probe, and every warmed bucket's
compiles. The server's own log line gives the split between load and warm-up,
and one in-process run of the same steps splits the start stage by stage.

Usage: ``python benchmarks/bench_cold_start.py [--runs N] [--markdown PATH]``
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hessd_server.serving.server_process import ServerProcess

from markdown_page import command_line, machine_description, publish, render_page

DEFAULT, RECORD = "by rule (default)", "tuning record read (`--tuning-cache`)"
SHIPPED = "tuning record beside the version (`--write-tuning-records`)"
VARIANTS: dict[str, tuple[str, ...]] = {
    DEFAULT: (),
    "`--strategy pfor`": ("--strategy", "pfor"),
    RECORD: ("--tuning-cache",),
    SHIPPED: ("--model-repository",),
}
"""Each variant's flags; the record variants' directory is appended."""
WITH_RECORD = (RECORD, SHIPPED)

STAGES = """
import time
began = time.perf_counter()
import tensorflow, keras
stages = {"import TensorFlow and Keras": time.perf_counter() - began}
def stage(name, since):
    now = time.perf_counter()
    stages[name] = now - since
    return now
now = time.perf_counter()
import hessd_server as hs
now = stage("import hessd_server", now)
model = hs.load_model(hs.DEMO_MODEL_SOURCE)
now = stage("load the demo model", now)
hs.warmup(model, [32], methods=["hessian"])
now = stage("bucket 32, per-example Hessian: probe, trace, compile, strategy check", now)
hs.warmup(model, [32])
now = stage("bucket 32, gradient and HVP: trace, compile", now)
hs.warmup(model, [1, 8])
now = stage("buckets 1 and 8, every method: trace, compile", now)
print(json.dumps(stages))
"""
"""One process's start, stage by stage, by rule (as the default server warms the demo model)."""
TARGET_S = 10.0
RECORD_TARGET_S = 6.0
STARTUP_TIMEOUT_S = 600.0
"""How long one start may take before the benchmark gives up (a heavily loaded machine is slow)."""
TITLE = "Cold start to SERVING"


def start_seconds(flags: Sequence[str]) -> tuple[float, float]:
    """Seconds until one fresh server is SERVING, and its logged warm-up seconds."""
    began = time.perf_counter()
    with ServerProcess(*flags, "--log-level", "INFO", startup_timeout=STARTUP_TIMEOUT_S) as server:
        elapsed = time.perf_counter() - began
        found = re.search(r"warm-up ([\d.]+)s", server.output())
    return elapsed, float(found.group(1)) if found else float("nan")


def stage_seconds() -> dict[str, float]:
    """Seconds of each stage of one fresh process's start (:data:`STAGES`)."""
    result = subprocess.run(
        [sys.executable, "-c", "import json\n" + STAGES], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _write_repository(repository: Path) -> None:
    """A model repository holding the demo model as version 1, with the tuning records
    ``hessd-server --write-tuning-records`` writes beside it."""
    from hessd_server.engine.demo_model import build_demo_model

    (repository / "demo" / "1").mkdir(parents=True)
    build_demo_model().save(repository / "demo" / "1" / "model.keras")
    subprocess.run(
        [sys.executable, "-m", "hessd_server.serving.main", "--model-repository", str(repository), "--write-tuning-records"],
        check=True,
        capture_output=True,
        timeout=600,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="starts of each variant (default %(default)s)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report as a page to PATH")
    args = parser.parse_args(argv)
    header = machine_description()
    print("\n".join(header), flush=True)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="hessd-tuning-") as scratch:
        cache, repository = Path(scratch) / "cache", Path(scratch) / "repository"
        _write_repository(repository)
        flags_of = {
            name: (*flags, str(cache if name == RECORD else repository)) if name in WITH_RECORD else flags
            for name, flags in VARIANTS.items()
        }
        start_seconds(flags_of[RECORD])  # writes the tuning records the timed starts read
        for run in range(args.runs):
            for name, flags in flags_of.items():
                times[name].append(start_seconds(flags))
                print(f"run {run + 1}, {name}: {times[name][-1][0]:.2f} s", flush=True)
    stages = stage_seconds()
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
    slowest_record = max(t for name in WITH_RECORD for t, _ in times[name])
    lines += [
        "",
        f"- Target: the demo server SERVING within {TARGET_S:g} s by default: slowest start "
        f"{slowest:.2f} s, {'met' if slowest <= TARGET_S else 'NOT met'}.",
        f"- Target: within {RECORD_TARGET_S:g} s when a tuning record exists: slowest start "
        f"{slowest_record:.2f} s, {'met' if slowest_record <= RECORD_TARGET_S else 'NOT met'}.",
        "",
        "One start by rule, in-process, stage by stage:",
        "",
        "| stage | s |",
        "|---|---:|",
        *(f"| {stage} | {seconds:.2f} |" for stage, seconds in stages.items()),
        f"| total | {sum(stages.values()):.2f} |",
        "",
        f"- 1-minute load average at end {os.getloadavg()[0]:.2f}",
    ]
    page = render_page(TITLE, header, command, lines)
    publish(page, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
