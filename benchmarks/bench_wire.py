"""Wire benchmark: hessd's small calls and concurrent callers on a real
``hessd-server`` process, each beside its baseline in the same run.

* **Small call.** One caller, the ``mid`` MLP (64 -> 256 -> 256 -> 1, tanh), B=1,
  a per-example Hessian over the SDK, against a bare gRPC echo server in its
  own process answering the same request bytes with the same reply bytes
  (``echo_server.py``), and against the same call in-process (``hs.hessian``).
  The three take turns in slices of calls. Beside them, the in-process call when
  each follows an idle as long as the wire call's p50 less the in-process one: the
  time a lone caller's engine waits between two of its engine calls.
* **Concurrent callers.** 1, 8 and 32 callers, each sending B=1 Hessians back
  to back through one ``hessd.AsyncClient``, to a server with batching on and
  one with ``--no-batching``: throughput, p50, p99 and the mean examples per
  engine call (from the server's ``hessd_batch_size`` histogram). Beside them,
  one caller sending the whole B=32 batch in one call, and 8 and 32 callers
  to a server letting two batches of one model and key run at once
  (``--max-batches-in-flight 2``, the way of spreading batches over the engine
  threads that the default of one replaces), and 1 and 32 callers and the B=32
  call to a server whose TensorFlow runs each operation on one thread
  (``--intra-op-threads 1``). Beside them, 1 and 32 raw ``grpc.aio`` callers of
  the bare echo server: what gRPC alone sustains here with the same bytes. Every
  server runs from the start, and those compared at one load take turns (five
  turns of a fifth of the row's seconds, the order reversed every other turn), so
  that the shared machine's changing load falls on all of them alike.
* **Where the time went.** For each load, the mean time of a call as its callers
  saw it, in the server's handler, queued in the batcher, and per engine call on
  its thread (from the server's own histograms), beside the same engine calls
  (B=1, 8 and 32) timed in-process with nothing else running.
* **In-process floor.** At D=16, B=1, ``hs.hessian`` against TensorFlow's own
  floor for a call of that size (a ``jit_compile`` function returning a
  (1, 16, 16) array, and ``.numpy()``), and JAX ``jit(vmap(hessian))`` when installed.
* **Garbage collection.** 32 callers of the default server, which freezes its
  long-lived objects out of the garbage collector's way, and of one with
  ``--no-freeze-heap``, taking turns: latency percentiles to the maximum, and the
  full collections each server timed and how long they paused it.
* **The serving layer against its floor.** The small call against echo +
  in-process; at 32 callers the calls/s, the CPU per call of the server and the
  SDK callers against the floor (echo server + raw callers + the engine's own CPU
  per example at B=32), the ceiling that floor allows on this machine's cores,
  hessd's share of it, p50 and p99; each against its target.
* **Where a small call's time goes in the server.** The stages of a B=1 call
  through the server's own parts without gRPC (``serving_stages.py``: decode, the
  data plane with its hand-off to an engine thread and back, encode) beside the
  engine alone, and a cProfile of the event loop's CPU by function.
* **What the targets ask of this machine.** From the rows above: the most calls
  per second 32 callers could get on this machine's cores if hessd's own code
  cost nothing (gRPC's CPU per call from the echo rows, the engine's per example
  from its cheapest measured run), the CPU per call that leaves to hessd if the
  scaling and small-call targets are both to hold, and the throughput the tail
  target needs.

The rows and the report's rendering live in ``wire_report.py``. With ``--tracing``
the benchmark measures only what tracing costs (``wire_tracing.py``).

Usage: ``python benchmarks/bench_wire.py [--quick] [--seconds S] [--markdown PATH] [--tracing]``
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import argparse
import asyncio
import contextlib
import functools
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf

import hessd
import hessd_server as hs
from hessd import tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd_server.serving.server_process import ServerProcess
from prometheus_client.parser import text_string_to_metric_families

from bench_methods import MID_DIM, Workload, build_mid, build_mlp, jax_method
from markdown_page import command_line, machine_description, publish, render_page
from wire_report import (
    CALLERS,
    ECHO,
    FLOOR_DIM,
    GC_TURNS,
    NOT_FROZEN,
    SERVER_SAMPLES,
    SINGLE_THREADED,
    SMALL_CALL_BASE,
    EngineAlone,
    Load,
    merged,
    render,
    render_collector,
    serving_layer_figures,
    what_the_targets_ask,
)
from serving_stages import serving_stages
from wire_tracing import TRACING_CALLERS, render_tracing, tracing_servers

BENCHMARKS = Path(__file__).resolve().parent
MODEL = "mid"
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "on": ((), CALLERS),
    SINGLE_THREADED: (("--intra-op-threads", "1"), (1, CALLERS[-1])),
    "on, 2 in flight": (("--max-batches-in-flight", "2"), CALLERS[1:]),
    "off": (("--no-batching",), CALLERS),
}
"""The hessd servers whose rows are compared, by row label: their flags, and the callers
they are measured with."""
ECHO_CALLERS = (1, CALLERS[-1])
WHOLE_BATCH_SERVERS = ("on", SINGLE_THREADED)
"""The servers one caller sends the whole B=32 batch to, the default first."""
TURNS = 5
"""Turns the servers compared at one load take, each of a fifth of the row's seconds."""
TITLE = "Throughput on the wire"
STARTUP_TIMEOUT_S = 900.0
"""Seconds each server may take to load and warm: its servers start together, and on a
shared 2-core machine warming every bucket of five of them takes minutes."""


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User and system CPU seconds of process ``pid`` (or of its thread ``thread``), from
    ``/proc``; NaN where there is none."""
    path = Path(f"/proc/{pid}") if thread is None else Path(f"/proc/{pid}/task/{thread}")
    try:
        fields = (path / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> tuple[float, float, float]:
    """CPU seconds so far: the serving process ``pid``, its main (event loop) thread, this process."""
    usage = os.times()
    return cpu_seconds(pid), cpu_seconds(pid, pid), usage.user + usage.system


def cpu_ms_per_call(
    read: Callable[[], tuple[float, ...]], call: Callable[[], object], seconds: float
) -> tuple[float, ...]:
    """CPU milliseconds per ``call()`` of each CPU-seconds count ``read()`` returns, while
    ``call`` runs back to back for ``seconds``."""
    before, calls, stop = read(), 0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        call()
        calls += 1
    return tuple((after - first) / calls * 1e3 for first, after in zip(before, read()))


def take_turns(methods: dict[str, Callable[[], object]], seconds: float, slice_s: float = 0.1) -> dict[str, list[float]]:
    """Seconds per call of each method; they take turns in slices of ``slice_s`` until each had ``seconds``."""
    runs: dict[str, list[float]] = {name: [] for name in methods}
    while any(sum(times) < seconds for times in runs.values()):
        for name, method in methods.items():
            start = time.perf_counter()
            while time.perf_counter() - start < slice_s:
                began = time.perf_counter()
                method()
                runs[name].append(time.perf_counter() - began)
    return runs


def hessd_server(*flags: str) -> ServerProcess:
    """A ``hessd-server`` child serving the ``mid`` MLP, warmed for every bucket up to 32."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
    return ServerProcess(
        "--model", f"{MODEL}=bench_methods:build_mid",
        "--warmup-batch-sizes", "1,2,4,8,16,32",
        "--metrics-port", "0", "--metrics-host", "127.0.0.1",
        "--log-level", "INFO",
        *flags,
        startup_timeout=STARTUP_TIMEOUT_S,
    )


class EchoProcess:
    """``echo_server.py`` in its own process on a unix socket."""

    def __init__(self, reply_bytes: int) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="echo-")
        self.target = f"unix://{Path(self._directory.name) / 'echo.sock'}"
        self._argv = [sys.executable, str(BENCHMARKS / "echo_server.py"), "--listen", self.target, "--reply-bytes", str(reply_bytes)]

    def __enter__(self) -> EchoProcess:
        self._process = subprocess.Popen(self._argv, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None and self._process.stdout.readline().strip() == "listening"
        return self

    @property
    def pid(self) -> int:
        return self._process.pid

    def __exit__(self, *exc: object) -> None:
        self._process.kill()
        self._process.wait()
        self._directory.cleanup()


def small_call(
    server: ServerProcess, echo: EchoProcess, seconds: float
) -> tuple[dict[str, float], dict[str, tuple[float, ...]]]:
    """Median ms of a B=1 Hessian over the wire, the echo of its bytes, and in-process;
    and the CPU ms per call of hessd-server and of the echo server (all threads, event loop)."""
    x = np.random.default_rng(0).standard_normal((1, MID_DIM)).astype(np.float32)
    request = pb.HessianRequest(model_name=MODEL, x={"x": tensor_codec.encode(x, field="x")}).SerializeToString()
    model = hs.load_model(build_mid())
    with hessd.Client(server.target, timeout=60) as client:
        reply = pb.HessianResponse(hessian=tensor_codec.encode(client.hessian(MODEL, x), field="hessian"))
        np.testing.assert_allclose(client.hessian(MODEL, x), hs.hessian(model, x), rtol=1e-5, atol=1e-6)
        with grpc.insecure_channel(echo.target) as channel:
            call = channel.unary_unary("/bench.Echo/Echo")
            assert len(call(request)) == reply.ByteSize()
            wire, echo_call, in_process = SMALL_CALL_BASE
            methods: dict[str, Callable[[], object]] = {
                wire: lambda: client.hessian(MODEL, x),
                echo_call: lambda: call(request),
                in_process: lambda: hs.hessian(model, x),
            }
            runs = take_turns(methods, seconds)
            cpu = {
                "hessd-server": cpu_ms_per_call(
                    lambda: _cpu(server.process.pid)[:2], lambda: client.hessian(MODEL, x), seconds
                ),
                "bare gRPC echo server": cpu_ms_per_call(lambda: _cpu(echo.pid)[:2], lambda: call(request), seconds),
            }
    medians = {name: statistics.median(times) * 1e3 for name, times in runs.items()}
    idle_ms = medians[wire] - medians[in_process]
    medians[f"hessd in-process, each call after {idle_ms:.2f} ms idle (a lone caller's engine idles as long)"] = (
        after_idle(lambda: hs.hessian(model, x), idle_ms / 1e3, seconds)
    )
    return medians, cpu


def after_idle(call: Callable[[], object], idle_s: float, seconds: float) -> float:
    """Median ms of ``call()`` when each call follows ``idle_s`` seconds of sleep, as a
    lone caller's engine call follows the rest of the call before: TensorFlow's threads
    and caches go cold within milliseconds."""
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        time.sleep(idle_s)
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def _server_histograms(server: ServerProcess) -> dict[str, tuple[float, float]]:
    """(sum, count) of each histogram of :data:`SERVER_SAMPLES`, from the server's ``/metrics``."""
    with urllib.request.urlopen(server.metrics_url(), timeout=30) as response:
        families = {family.name: family for family in text_string_to_metric_families(response.read().decode())}
    totals = {}
    for key, (name, labels) in SERVER_SAMPLES.items():
        found = {
            sample.name.removeprefix(name): sample.value
            for sample in families[name].samples
            if labels.items() <= sample.labels.items() and sample.name in (name + "_sum", name + "_count")
        }
        totals[key] = (found.get("_sum", 0.0), found.get("_count", 0.0))
    return totals


async def _back_to_back(
    call: Callable[[], Awaitable[object]],
    callers: int,
    seconds: float,
    started: Callable[[], Any],
    finished: Callable[[], Any],
) -> tuple[int, list[float], float, Any, Any]:
    """``callers`` tasks each awaiting ``call()`` back to back for ``seconds``, after one
    call each to warm up: calls, latencies, elapsed seconds, and what ``started()``
    read once the warm-up was over and ``finished()`` read once the last call was."""
    await asyncio.gather(*(call() for _ in range(callers)))
    latencies: list[float] = []
    first = started()
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - start
    return len(latencies), latencies, elapsed, first, finished()


async def _callers(
    target: str, callers: int, seconds: float, batch: int, started: Callable[[], Any], finished: Callable[[], Any]
) -> tuple[int, list[float], float, Any, Any]:
    """``callers`` tasks of one ``hessd.AsyncClient`` calling back to back for ``seconds``."""
    x = np.random.default_rng(1).standard_normal((batch, MID_DIM)).astype(np.float32)
    async with hessd.AsyncClient(target, timeout=60) as client:
        return await _back_to_back(lambda: client.hessian(MODEL, x), callers, seconds, started, finished)


def load(server: ServerProcess, batching: str, callers: int, seconds: float, batch: int = 1) -> Load:
    """Measure ``callers`` concurrent callers of B=``batch`` Hessians. The server's
    histograms are read outside the CPU window, so that reading them is not counted."""
    calls, latencies, elapsed, (before, cpu_before), (cpu_after, after) = asyncio.run(
        _callers(
            server.target,
            callers,
            seconds,
            batch,
            lambda: (_server_histograms(server), _cpu(server.process.pid)),
            lambda: (_cpu(server.process.pid), _server_histograms(server)),
        )
    )
    cpu = [later - earlier for earlier, later in zip(cpu_before, cpu_after)]
    histograms = {
        key: (after[key][0] - before[key][0], after[key][1] - before[key][1]) for key in SERVER_SAMPLES
    }
    return Load(batching, callers, calls, elapsed, tuple(latencies), *cpu, histograms, batch)


def in_turns(measures: dict[str, Callable[[float], Load]], seconds: float, turns: int = TURNS) -> list[Load]:
    """Each measurement of ``measures`` (by row label, given the seconds to run), taking
    ``turns`` turns of ``seconds / turns`` each, the order reversed every other turn so
    that a change in the machine's load falls on all of them alike; each merged."""
    runs: dict[str, list[Load]] = {label: [] for label in measures}
    for turn in range(turns):
        order = list(measures) if turn % 2 == 0 else list(reversed(measures))
        for label in order:
            runs[label].append(measures[label](seconds / turns))
    return [merged(runs[label]) for label in measures]


def small_request_and_reply_bytes() -> tuple[bytes, int]:
    """The serialized B=1 Hessian request of the ``mid`` MLP, and its reply's size in bytes."""
    x = np.random.default_rng(0).standard_normal((1, MID_DIM)).astype(np.float32)
    request = pb.HessianRequest(model_name=MODEL, x={"x": tensor_codec.encode(x, field="x")})
    result = np.zeros((1, MID_DIM, MID_DIM), np.float32)
    reply = pb.HessianResponse(hessian=tensor_codec.encode(result, field="hessian"))
    return request.SerializeToString(), reply.ByteSize()


async def _echo_callers(
    target: str, request: bytes, callers: int, seconds: float, read: Callable[[], Any]
) -> tuple[int, list[float], float, Any, Any]:
    """``callers`` tasks echoing ``request`` back to back over one raw ``grpc.aio`` channel."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary("/bench.Echo/Echo")
        return await _back_to_back(lambda: call(request), callers, seconds, read, read)


def echo_load(echo: EchoProcess, request: bytes, callers: int, seconds: float) -> Load:
    """``callers`` concurrent raw gRPC callers of the bare echo server: what gRPC alone
    sustains on this machine with the same bytes, the ceiling of any server here."""
    calls, latencies, elapsed, cpu_before, cpu_after = asyncio.run(
        _echo_callers(echo.target, request, callers, seconds, lambda: _cpu(echo.pid))
    )
    cpu = [later - earlier for earlier, later in zip(cpu_before, cpu_after)]
    return Load(ECHO, callers, calls, elapsed, tuple(latencies), *cpu)


ALONE_BATCHES = (1, 8, 32)
"""Batch sizes whose engine call is timed in-process, alone, beside the loads."""


def engine_alone(seconds: float) -> dict[int, EngineAlone]:
    """``hs.hessian`` on the ``mid`` MLP in this process, with nothing else running, at
    each of :data:`ALONE_BATCHES`: what an engine call of that size costs when it has
    the machine to itself."""
    model = hs.load_model(build_mid())
    rng = np.random.default_rng(3)
    inputs = {batch: rng.standard_normal((batch, MID_DIM)).astype(np.float32) for batch in ALONE_BATCHES}
    methods: dict[str, Callable[[], object]] = {
        str(batch): (lambda x=x: hs.hessian(model, x)) for batch, x in inputs.items()
    }
    for method in methods.values():
        method()
    runs = take_turns(methods, seconds)
    cpu = {
        batch: cpu_ms_per_call(lambda: (sum(os.times()[:2]),), methods[str(batch)], seconds / 2)[0] / batch
        for batch in ALONE_BATCHES
    }
    return {int(batch): EngineAlone(statistics.median(times) * 1e3, cpu[int(batch)]) for batch, times in runs.items()}


def in_process_floor(seconds: float) -> dict[str, float]:
    """Median ms at D=16, B=1: ``hs.hessian``, TF's floor for a (1, 16, 16) result, and JAX."""
    keras_model = build_mlp(FLOOR_DIM)
    model = hs.load_model(keras_model)
    x = np.random.default_rng(2).standard_normal((1, FLOOR_DIM)).astype(np.float32)

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec((1, FLOOR_DIM), tf.float32)])
    def floor(inputs: tf.Tensor) -> tf.Tensor:
        return tf.zeros((1, FLOOR_DIM, FLOOR_DIM)) + tf.reduce_sum(inputs)

    methods: dict[str, Callable[[], object]] = {
        "hessd `hs.hessian`": lambda: hs.hessian(model, x),
        "TF floor: `jit_compile` function, (1, 16, 16) result, `.numpy()`": lambda: floor(x).numpy(),
    }
    try:
        jax = jax_method(Workload("mlp", keras_model, (FLOOR_DIM,), "float32"), 1)
        methods["JAX `jit(vmap(hessian))`"] = lambda: jax.compute(x)
    except ImportError:
        pass
    for method in methods.values():
        method()
    runs = take_turns(methods, seconds)
    return {name: statistics.median(times) * 1e3 for name, times in runs.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test, not a measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default %(default)s)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report as a page to PATH")
    parser.add_argument("--tracing", action="store_true", help="measure only what tracing costs, off and on")
    args = parser.parse_args(argv)
    seconds = 0.3 if args.quick else args.seconds
    header = machine_description()
    print("\n".join(header), flush=True)
    if args.tracing:
        return tracing_cost(header, seconds, args.markdown, argv)
    request, reply_bytes = small_request_and_reply_bytes()
    with contextlib.ExitStack() as stack:
        print("starting the servers ...", flush=True)
        servers = {label: stack.enter_context(hessd_server(*flags)) for label, (flags, _) in VARIANTS.items()}
        servers[NOT_FROZEN] = stack.enter_context(hessd_server("--no-freeze-heap"))
        echo = stack.enter_context(EchoProcess(reply_bytes))
        print("small call ...", flush=True)
        small, small_cpu = small_call(servers["on"], echo, seconds)
        loads: list[Load] = []
        for callers in CALLERS:
            print(f"{callers} callers, the servers taking turns ...", flush=True)
            measures = {
                label: functools.partial(load, servers[label], label, callers)
                for label, (_, levels) in VARIANTS.items()
                if callers in levels
            }
            if callers in ECHO_CALLERS:
                measures[ECHO] = functools.partial(echo_load, echo, request, callers)
            loads += in_turns(measures, seconds)
        print("one caller, B=32, the servers taking turns ...", flush=True)
        whole_batches = in_turns(
            {label: functools.partial(load, servers[label], label, 1, batch=32) for label in WHOLE_BATCH_SERVERS},
            seconds,
        )
        print("garbage collection, frozen and not ...", flush=True)
        collector = in_turns(
            {label: functools.partial(load, servers[label], label, CALLERS[-1]) for label in ("on", NOT_FROZEN)},
            seconds * GC_TURNS,
            turns=GC_TURNS,
        )
    rows = [*VARIANTS, ECHO]
    loads.sort(key=lambda row: (rows.index(row.batching), row.callers))
    print("in-process floor and engine calls alone ...", flush=True)
    floor = in_process_floor(seconds)
    alone = engine_alone(seconds)
    print("the server's stages without gRPC, and the event loop's profile ...", flush=True)
    stages = serving_stages(seconds)
    command = command_line("bench_wire.py", sys.argv[1:] if argv is None else argv)
    body = [
        "- server: `hessd-server` in its own process on a unix socket, default flags (engine threads 2, "
        "one batch in flight per model and key, max queue delay 20 ms), warmed for "
        "buckets 1–32; the echo server likewise on a unix socket; clients in the benchmark process",
        f"- every server runs from the start; the servers compared at one load take {TURNS} turns "
        f"of a fifth of the {seconds:g} s each, the order reversed every other turn",
        "",
        *render(small, small_cpu, loads, whole_batches, floor, alone),
        *serving_layer_figures(small, loads, alone),
        *stages,
        *what_the_targets_ask(small, loads, whole_batches, alone),
        *render_collector(collector, seconds),
        "",
        f"- 1-minute load average at end {os.getloadavg()[0]:.2f}",
    ]
    page = render_page(TITLE, header, command, body)
    publish(page, args.markdown)
    return 0


def tracing_cost(header: list[str], seconds: float, markdown: Path | None, argv: Sequence[str] | None) -> int:
    """The servers of ``wire_tracing.TRACING_SERVERS`` taking turns at each load."""
    with contextlib.ExitStack() as stack:
        print("starting the servers ...", flush=True)
        servers = tracing_servers(stack, hessd_server)
        loads: list[Load] = []
        for callers in TRACING_CALLERS:
            print(f"{callers} callers, the servers taking turns ...", flush=True)
            loads += in_turns({label: functools.partial(load, server, label, callers) for label, server in servers.items()}, seconds)
    command = command_line("bench_wire.py", sys.argv[1:] if argv is None else argv)
    page = render_page("What tracing costs on the wire", header, command, render_tracing(loads))
    publish(page, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
