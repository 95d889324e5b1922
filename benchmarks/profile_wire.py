"""Where the CPU of 32 concurrent small calls goes, in the server and in the callers:
py-spy samples a real ``hessd-server`` and a process of ``hessd.AsyncClient``
callers, and the samples are summed by function (own time and time inside).

It is the profile behind the stage table of ``bench_wire.py``: the event loop's
share of each function is what a change to the serving layer can save.

Usage: ``python benchmarks/profile_wire.py [--seconds S] [--callers N] [--top N] [--raw DIR]``
(py-spy, of the ``dev`` extra, must be on PATH or beside this Python).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
MODEL = "mid"
RATE = 250
"""py-spy's samples per second: few enough that sampling two processes leaves the CPU to them."""


def py_spy() -> str:
    """The py-spy executable: beside this Python, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed: pip install py-spy (it is in the dev extra)")
    return found


async def _call_back_to_back(target: str, callers: int, seconds: float, dim: int) -> int:
    import hessd

    x = np.random.default_rng(1).standard_normal((1, dim)).astype(np.float32)
    calls = 0
    async with hessd.AsyncClient(target, timeout=60) as client:
        await asyncio.gather(*(client.hessian(MODEL, x) for _ in range(callers)))
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal calls
            while time.perf_counter() < stop:
                await client.hessian(MODEL, x)
                calls += 1

        await asyncio.gather(*(caller() for _ in range(callers)))
    return calls


def callers_main(target: str, callers: int, seconds: float, dim: int) -> None:
    """The callers' process: imports what it calls with, prints ``ready``, waits for a
    line, calls for ``seconds``, prints the calls made."""
    importlib.import_module("hessd")  # before the profile starts

    print("ready", flush=True)
    sys.stdin.readline()
    print(asyncio.run(_call_back_to_back(target, callers, seconds, dim)), flush=True)


def summed(raw: Path) -> tuple[int, dict[str, int], dict[str, int]]:
    """(samples, own samples by function, inclusive samples by function) of a py-spy
    ``--format raw --threads`` file, whose stacks start with their thread."""
    own: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames[1:]):
            inside[frame] += samples
    return total, own, inside


def _short(frame: str) -> str:
    for marker in ("site-packages/", "/server/", "/client/", "/lib/python3"):
        head, found, tail = frame.rpartition(marker)
        if found:
            return frame.split(" (")[0] + " (" + tail
    return frame


def report(name: str, raw: Path, calls: int, top: int) -> list[str]:
    total, own, inside = summed(raw)
    rate = RATE
    lines = [f"## {name}: {total} samples at {rate} Hz over {calls} calls", ""]
    lines += ["| function (own time) | µs per call |", "|---|---:|"]
    lines += [f"| `{_short(f)}` | {n / rate / calls * 1e6:.1f} |" for f, n in own.most_common(top)]
    lines += ["", "| function (inclusive) | µs per call |", "|---|---:|"]
    lines += [f"| `{_short(f)}` | {n / rate / calls * 1e6:.1f} |" for f, n in inside.most_common(top)]
    return lines + [""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks in this folder")
    parser.add_argument("--server-flags", default="", help="further hessd-server flags")
    args = parser.parse_args(argv)
    from bench_methods import MID_DIM
    from bench_wire import hessd_server

    spy = py_spy()
    raw_dir = args.raw or Path(tempfile.mkdtemp(prefix="profile-wire-"))
    raw_dir.mkdir(parents=True, exist_ok=True)
    with hessd_server(*args.server_flags.split()) as server:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCHMARKS), os.environ.get("PYTHONPATH", "")])}
        code = f"import profile_wire; profile_wire.callers_main({server.target!r}, {args.callers}, {args.seconds}, {MID_DIM})"
        callers = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert callers.stdout is not None and callers.stdin is not None
        assert callers.stdout.readline().strip() == "ready"
        spies = [
            subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", str(RATE),
                 "--format", "raw", "--threads", "--nonblocking", "--output", str(raw_dir / f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for name, pid in (("server", server.process.pid), ("callers", callers.pid))
        ]
        callers.stdin.write("go\n")
        callers.stdin.flush()
        calls = int(callers.stdout.readline())
        callers.wait()
        for spy_process in spies:
            spy_process.wait()
    for name in ("server", "callers"):
        print("\n".join(report(name, raw_dir / f"{name}.txt", calls, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
