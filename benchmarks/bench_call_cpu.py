"""CPU per small call, in the caller and in the server, for source trees taking turns.

CPU time, unlike wall time, is little changed by other work on a shared machine,
so two versions of hessd can be compared on a busy one. Each tree (a checkout's
root, whose ``client/`` and ``server/`` go first on ``PYTHONPATH``) serves the
``mid`` MLP from a ``hessd-server`` child of its own on a unix socket. In each
round every tree gets a fresh caller process of its own code (the order reversed
every other round), which makes ``--calls`` B=1 Hessian calls back to back and
reports, per call: its process's CPU, its calling thread's CPU, and the CPU of
the server process and of the server's event loop thread (from ``/proc``).

Modes: ``client`` (``hessd.Client``, one caller), ``async`` (``--callers`` tasks
of one ``hessd.AsyncClient``), ``raw`` (one caller of a ``grpc`` channel with the
SDK's options, sending the request's bytes and taking the reply's bytes: the
caller's floor on the same server), ``raw-async`` (the same over ``grpc.aio``, with
``--callers`` tasks) and ``bare`` (as ``raw``, with gRPC's default options).
``--profile`` instead prints a cProfile of a ``client`` caller's calling thread,
on the thread's CPU clock, for the first tree.

Usage: ``python benchmarks/bench_call_cpu.py [--tree NAME=PATH ...] [--mode client|async|raw|raw-async|bare ...]
[--callers N] [--calls N] [--rounds N] [--profile]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
MODEL = "mid"
DIM = 64
"""Input size of the ``mid`` MLP (``bench_methods.MID_DIM``, which imports TensorFlow)."""
HESSIAN_PATH = "/hessd.v1.HessianService/Hessian"
COLUMNS = ("caller process", "calling thread", "server process", "server event loop")
"""What each caller reports, in CPU ms per call, in this order."""
WARM_CALLS = 100
"""Calls each caller makes before it starts counting."""
PROFILE_ROWS = 30
"""Functions each of the two profile tables lists."""


def _cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User and system CPU seconds of process ``pid`` (or its thread ``thread``), from
    ``/proc``; read here rather than through ``bench_wire``, which imports TensorFlow
    into the caller processes."""
    path = Path(f"/proc/{pid}") if thread is None else Path(f"/proc/{pid}/task/{thread}")
    fields = (path / "stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _readings(server_pid: int) -> tuple[float, ...]:
    """CPU seconds so far, in the order of :data:`COLUMNS`."""
    usage = os.times()
    return (
        usage.user + usage.system,
        time.thread_time(),
        _cpu_seconds(server_pid),
        _cpu_seconds(server_pid, server_pid),
    )


def _request_bytes(x: Any) -> bytes:
    """The serialized Hessian request of ``x`` (B, 64) float32 for the ``mid`` MLP."""
    from hessd import tensor_codec
    from hessd.v1 import hessian_service_pb2 as pb

    return pb.HessianRequest(model_name=MODEL, x={"": tensor_codec.encode(x, field="x")}).SerializeToString()


def caller_main(target: str, mode: str, callers: int, calls: int, server_pid: int, profile: bool) -> None:
    """One caller process: ``calls`` B=1 Hessians in ``mode``, then one JSON line of CPU
    ms per call (or, with ``profile``, the calling thread's cProfile)."""
    import numpy as np

    import hessd

    x = np.random.default_rng(0).standard_normal((1, DIM)).astype(np.float32)
    if mode in ("async", "raw-async"):
        before, after = _async_calls(target, mode, x, callers, calls, server_pid)
        calls = calls // callers * callers
    else:
        if mode in ("raw", "bare"):
            import grpc

            from hessd import _channels

            options = _channels.channel_options(target, None, None) if mode == "raw" else None
            channel = grpc.insecure_channel(target, options=options)
            method = channel.unary_unary(HESSIAN_PATH)
            request = _request_bytes(x)

            def call() -> object:
                return method(request, timeout=60)

        else:
            client = hessd.Client(target, timeout=60)

            def call() -> object:
                return client.hessian(MODEL, x)

        for _ in range(WARM_CALLS):
            call()
        if profile:
            _profiled(call, calls)
            return
        before = _readings(server_pid)
        for _ in range(calls):
            call()
        after = _readings(server_pid)
    print(json.dumps({name: (b - a) / calls * 1e3 for name, a, b in zip(COLUMNS, before, after)}))


def _async_calls(
    target: str, mode: str, x: Any, callers: int, calls: int, server_pid: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """CPU readings before and after ``callers`` tasks made ``calls`` calls together."""
    import asyncio

    import grpc.aio

    import hessd
    from hessd import _channels

    async def run() -> tuple[tuple[float, ...], tuple[float, ...]]:
        if mode == "async":
            client = hessd.AsyncClient(target, timeout=60)

            async def call() -> object:
                return await client.hessian(MODEL, x)

            close = client.close
        else:
            channel = grpc.aio.insecure_channel(target, options=_channels.channel_options(target, None, None))
            method = channel.unary_unary(HESSIAN_PATH)
            request = _request_bytes(x)

            async def call() -> object:
                return await method(request, timeout=60)

            close = channel.close

        async def caller(share: int) -> None:
            for _ in range(share):
                await call()

        await asyncio.gather(*(caller(WARM_CALLS // callers + 1) for _ in range(callers)))
        before = _readings(server_pid)
        await asyncio.gather(*(caller(calls // callers) for _ in range(callers)))
        after = _readings(server_pid)
        await close()
        return before, after

    return asyncio.run(run())


def _profiled(call: Any, calls: int) -> None:
    """Print a cProfile of ``calls`` calls of ``call()``, on this thread's CPU clock."""
    import cProfile
    import pstats

    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    print(f"calling thread: {total / calls * 1e6:.1f} µs per call in profiled functions")
    stats.sort_stats("tottime").print_stats(PROFILE_ROWS)
    stats.sort_stats("cumulative").print_stats(PROFILE_ROWS)


def _environment(tree: Path) -> dict[str, str]:
    """This process's environment with ``tree``'s code first on ``PYTHONPATH``."""
    paths = [str(tree / "client"), str(tree / "server"), str(BENCHMARKS)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _caller(tree: Path, target: str, mode: str, callers: int, calls: int, pid: int, profile: bool) -> str:
    """What a fresh caller process of ``tree``'s code prints (see :func:`caller_main`)."""
    code = (
        "import bench_call_cpu; "
        f"bench_call_cpu.caller_main({target!r}, {mode!r}, {callers}, {calls}, {pid}, {profile})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_environment(tree), capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(done.stderr)
    return done.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout (default: this one)")
    parser.add_argument("--mode", action="append", choices=("client", "async", "raw", "bare", "raw-async"), default=[])
    parser.add_argument("--callers", type=int, default=32, help="tasks of the async mode")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--buckets", default="1,2,4,8,16,32", help="the servers' --warmup-batch-sizes")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    trees = dict(item.split("=", 1) for item in args.tree) or {"this": str(ROOT)}
    modes = args.mode or ["client"]

    from hessd_server.serving.server_process import ServerProcess

    servers: dict[str, ServerProcess] = {}
    try:
        for name, path in trees.items():
            server = ServerProcess(
                "--model", f"{MODEL}=bench_methods:build_mid", "--warmup-batch-sizes", args.buckets,
                startup_timeout=900.0,
            )
            saved = dict(os.environ)
            os.environ.update(_environment(Path(path)))
            try:
                servers[name] = server.__enter__()
            finally:
                os.environ.clear()
                os.environ.update(saved)
        if args.profile:
            name = next(iter(trees))
            print(_caller(Path(trees[name]), servers[name].target, "client", 1, args.calls,
                          servers[name].process.pid, True))
            return 0
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for mode in modes:
                for name in order:
                    server = servers[name]
                    line = _caller(Path(trees[name]), server.target, mode, args.callers, args.calls,
                                   server.process.pid, False)
                    results.setdefault((mode, name), []).append(json.loads(line))
        columns = COLUMNS
        print("| mode | tree | " + " | ".join(f"{c} (ms/call)" for c in columns) + " |")
        print("|---|---|" + "---:|" * len(columns))
        for (mode, name), rows in results.items():
            medians = [statistics.median(row[c] for row in rows) for c in columns]
            label = f"{mode} × {args.callers}" if mode in ("async", "raw-async") else mode
            print(f"| {label} | {name} | " + " | ".join(f"{m:.3f}" for m in medians) + " |")
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
