"""The rows a run of ``bench_wire.py`` produces, and its markdown report.

A :class:`Load` is one measured load (callers calling back to back, the server's
CPU and histogram sums over it), or several merged; :func:`render` turns a run's
rows into the report's tables and target lines, :func:`what_the_targets_ask` into
what the targets require of the machine, and :func:`render_collector` the
garbage-collection comparison into its table.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

CALLERS = (1, 8, 32)
FLOOR_DIM = 16
TARGET_SCALING, TARGET_TAIL, TARGET_SMALL_CALL, TARGET_FLOOR = 4.0, 3.0, 1.3, 2.0
SINGLE_THREADED = "on, 1 intra-op thread"
"""The row label of the server run with ``--intra-op-threads 1``."""
ECHO = "bare gRPC echo, raw gRPC callers"
"""The row label of the echo server's concurrency rows."""
NOT_FROZEN = "on, heap not frozen"
"""The row label of the server run with ``--no-freeze-heap``."""
SMALL_CALL_BASE = ("hessd over the wire", "bare gRPC echo", "hessd in-process")
"""The small call's rows that its target compares, in the order of the target's formula."""
GC_TURNS = 3
"""Turns of the garbage-collection comparison, each of a row's seconds."""
SERVER_SAMPLES = {
    "batch": ("hessd_batch_size", {}),
    "request": ("hessd_request_duration_seconds", {"method": "Hessian", "code": "OK"}),
    "queued": ("hessd_queue_duration_seconds", {}),
    "engine_call": ("hessd_engine_call_duration_seconds", {}),
    "full_collection": ("hessd_gc_pause_seconds", {"generation": "2"}),
}
"""The server histograms a load reads, by the name it reads them under, with their labels."""


@dataclass(frozen=True)
class ServerTimes:
    """Mean seconds of one load's calls as the server's own metrics saw them.

    Attributes:
        request: a Hessian RPC in the server's handler (``hessd_request_duration_seconds``).
        queued: a request in the batcher's queue (``hessd_queue_duration_seconds``).
        engine_call: an engine call, a batch or a request alone, on its engine thread
            (``hessd_engine_call_duration_seconds``).
    """

    request: float
    queued: float
    engine_call: float


@dataclass(frozen=True)
class Load:
    """One concurrency measurement: one run of back-to-back calls, or several merged.

    Attributes:
        batching: which server: "on" (the defaults), "off", "on, 2 in flight"
            (``--max-batches-in-flight 2``), :data:`SINGLE_THREADED`, :data:`NOT_FROZEN`
            or :data:`ECHO`.
        histograms: (sum, count) of each histogram of :data:`SERVER_SAMPLES` over the
            run, from the server's ``/metrics``; empty for the echo server.
    """

    batching: str
    callers: int
    calls: int
    seconds: float
    latencies_s: tuple[float, ...]
    server_cpu_s: float
    event_loop_cpu_s: float
    client_cpu_s: float
    histograms: dict[str, tuple[float, float]] = field(default_factory=dict)
    examples_per_call: int = 1

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1e3

    def cpu_ms_per_call(self, seconds: float) -> float:
        return seconds / self.calls * 1e3

    def mean(self, sample: str) -> float:
        """The mean of histogram ``sample`` (a key of :data:`SERVER_SAMPLES`); NaN without one."""
        total, count = self.histograms.get(sample, (0.0, 0.0))
        return total / count if count else float("nan")

    @property
    def mean_batch(self) -> float:
        return self.mean("batch")

    @property
    def in_server(self) -> ServerTimes | None:
        if not self.histograms:
            return None
        return ServerTimes(self.mean("request"), self.mean("queued"), self.mean("engine_call"))

    @property
    def full_collections(self) -> int:
        return round(self.histograms.get("full_collection", (0.0, 0.0))[1])

    @property
    def paused_s(self) -> float:
        return self.histograms.get("full_collection", (0.0, 0.0))[0]


def merged(runs: Sequence[Load]) -> Load:
    """The runs of one server, callers and batch size as one measurement."""
    first = runs[0]
    keys = first.histograms.keys()
    return Load(
        first.batching,
        first.callers,
        sum(run.calls for run in runs),
        sum(run.seconds for run in runs),
        tuple(latency for run in runs for latency in run.latencies_s),
        sum(run.server_cpu_s for run in runs),
        sum(run.event_loop_cpu_s for run in runs),
        sum(run.client_cpu_s for run in runs),
        {key: tuple(map(sum, zip(*(run.histograms[key] for run in runs)))) for key in keys},
        first.examples_per_call,
    )


@dataclass(frozen=True)
class EngineAlone:
    """An engine call of one batch size in-process, with nothing else running.

    Attributes:
        p50_ms: median milliseconds of the call.
        cpu_ms_per_example: CPU milliseconds of the whole process (TensorFlow's
            threads included) per example, calls back to back.
    """

    p50_ms: float
    cpu_ms_per_example: float


def render(
    small: dict[str, float],
    small_cpu: dict[str, tuple[float, ...]],
    loads: Sequence[Load],
    whole_batches: Sequence[Load],
    floor: dict[str, float],
    alone: dict[int, EngineAlone],
) -> list[str]:
    """The markdown tables and target lines; ``whole_batches`` are one caller's B=32 calls,
    the default server's ("on") first."""
    whole_batch = whole_batches[0]
    wire, echo, inproc = (small[name] for name in SMALL_CALL_BASE)
    lines = [
        "## A small call (the `mid` MLP, B=1, per-example Hessian, one caller)",
        "",
        "| call | p50 (ms) |",
        "|---|---:|",
        *(f"| {name} | {ms:.3f} |" for name, ms in small.items()),
        "",
        "CPU per call of the serving process, calls back to back from one caller:",
        "",
        "| server | CPU per call, all threads (ms) | of it, event loop thread (ms) |",
        "|---|---:|---:|",
        *(f"| {name} | {total:.2f} | {loop:.2f} |" for name, (total, loop) in small_cpu.items()),
        "",
        "## Concurrent callers (B=1 each, the `mid` MLP)",
        "",
        "| batching | callers | calls/s | × one caller | p50 (ms) | p99 (ms) | mean examples per engine call "
        "| server CPU per call (ms) | of it, event loop (ms) | callers' CPU per call (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in loads:
        ones = {r.batching: r for r in loads if r.callers == 1}
        one = ones.get(row.batching, ones["on"])
        lines.append(
            f"| {row.batching} | {row.callers} | {row.throughput:,.0f} | "
            f"{row.throughput / one.throughput:.2f}× | {row.percentile_ms(50):.2f} | {row.percentile_ms(99):.2f} | "
            f"{'–' if math.isnan(row.mean_batch) else f'{row.mean_batch:.1f}'} | {_cpu_columns(row)} |"
        )
    lines += [
        f"| {row.batching} | {_callers_label(row)} | {row.throughput:,.0f} calls/s, "
        f"{row.examples_per_call * row.throughput:,.0f} examples/s | | "
        f"{row.percentile_ms(50):.2f} | {row.percentile_ms(99):.2f} | {row.mean_batch:.1f} | "
        f"{_cpu_columns(row)} |"
        for row in whole_batches
    ]
    timed = [(row, row.in_server) for row in [*loads, *whole_batches] if row.in_server is not None]
    lines += [
        "",
        "Where the time of those calls went (means, ms): seen by the callers, in the server's "
        "handler, queued in the batcher, and per engine call on its thread (a batch counts once):",
        "",
        "| batching | callers | mean examples per engine call | callers' mean | server handler | queued | engine call |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(
            f"| {row.batching} | {_callers_label(row)} | {row.mean_batch:.1f} | "
            f"{statistics.fmean(row.latencies_s) * 1e3:.2f} | {times.request * 1e3:.2f} | "
            f"{times.queued * 1e3:.2f} | {times.engine_call * 1e3:.2f} |"
            for row, times in timed
        ),
        "",
        "The same engine calls alone, in-process (`hs.hessian` on the `mid` MLP, medians): "
        + ", ".join(f"B={batch} {engine.p50_ms:.2f} ms" for batch, engine in alone.items())
        + "; CPU per example, calls back to back: "
        + ", ".join(f"B={batch} {engine.cpu_ms_per_example:.2f} ms" for batch, engine in alone.items())
        + ".",
    ]
    lines += [
        "",
        f"## In-process floor (D={FLOOR_DIM}, B=1)",
        "",
        "| call | p50 (ms) |",
        "|---|---:|",
        *(f"| {name} | {ms:.3f} |" for name, ms in floor.items()),
        "",
    ]
    on = {r.callers: r for r in loads if r.batching == "on"}
    scaling = on[32].throughput / on[1].throughput
    tail = on[32].percentile_ms(99) / whole_batch.percentile_ms(50)
    ratio = wire / (echo + inproc)
    hessd_ms, floor_ms = list(floor.values())[:2]
    lines += [
        _target(f"32 callers, batching on: ≥ {TARGET_SCALING:g}× one caller's throughput", f"{scaling:.2f}×", scaling >= TARGET_SCALING),
        _target(
            f"p99 at 32 callers ≤ {TARGET_TAIL:g}× the p50 of one B=32 call",
            f"{on[32].percentile_ms(99):.2f} ms / {whole_batch.percentile_ms(50):.2f} ms = {tail:.2f}×",
            tail <= TARGET_TAIL,
        ),
        _target(
            f"small call p50 ≤ {TARGET_SMALL_CALL:g}× (echo p50 + in-process p50)",
            f"{wire:.3f} / ({echo:.3f} + {inproc:.3f}) = {ratio:.2f}×",
            ratio <= TARGET_SMALL_CALL,
        ),
        _target(
            f"in-process D={FLOOR_DIM}, B=1 ≤ {TARGET_FLOOR:g}× TF's floor",
            f"{hessd_ms:.3f} / {floor_ms:.3f} = {hessd_ms / floor_ms:.2f}×",
            hessd_ms / floor_ms <= TARGET_FLOOR,
        ),
    ]
    return lines


COLLECTOR_LABELS = {"on": "frozen (the default)", NOT_FROZEN: "not frozen (`--no-freeze-heap`)"}


def render_collector(runs: Sequence[Load], seconds: float) -> list[str]:
    """The garbage-collection comparison as a markdown table."""
    return [
        "",
        f"## Garbage collection ({CALLERS[-1]} callers, B=1, {GC_TURNS} turns of {seconds:g} s per server)",
        "",
        "| heap | calls/s | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | full collections | their pauses (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {COLLECTOR_LABELS[run.batching]} | {run.throughput:,.0f} | {run.percentile_ms(50):.1f} | "
            f"{run.percentile_ms(99):.1f} | {run.percentile_ms(99.9):.1f} | {max(run.latencies_s) * 1e3:.1f} | "
            f"{run.full_collections} | {run.paused_s * 1e3:,.1f} |"
            for run in runs
        ),
    ]


def what_the_targets_ask(
    small: dict[str, float], loads: Sequence[Load], whole_batches: Sequence[Load], alone: dict[int, EngineAlone]
) -> list[str]:
    """What the scaling, tail and small-call targets require on this machine, from this
    run's own rows: the most calls per second 32 callers could get if hessd's own code
    cost nothing, and the CPU per call left to hessd if the scaling and small-call
    targets are both to hold."""
    cores = os.cpu_count() or 1
    echo = next(row for row in loads if row.batching == ECHO and row.callers == CALLERS[-1])
    grpc_ms = echo.cpu_ms_per_call(echo.server_cpu_s + echo.client_cpu_s)
    engines = {
        f"in-process, B={max(alone)}": alone[max(alone)].cpu_ms_per_example,
        **{
            f"server CPU of the '{row.batching}' B={row.examples_per_call} call": row.cpu_ms_per_call(row.server_cpu_s)
            / row.examples_per_call
            for row in whole_batches
        },
    }
    cheapest = min(engines, key=engines.__getitem__)
    floor_ms = grpc_ms + engines[cheapest]
    ceiling = cores / floor_ms * 1e3
    wire_ms, echo_ms, inproc_ms = (small[name] for name in SMALL_CALL_BASE)
    cold_ms = next(ms for name, ms in small.items() if name not in SMALL_CALL_BASE)
    one = next(row for row in loads if row.batching == "on" and row.callers == 1)
    busy = next(row for row in loads if row.batching == "on" and row.callers == CALLERS[-1])
    needed_ms = TARGET_SCALING / ceiling * 1e3
    allowed_ms = TARGET_SMALL_CALL * (echo_ms + inproc_ms)
    hessd_allowed_ms = cores * allowed_ms / TARGET_SCALING - floor_ms
    hessd_ms = busy.cpu_ms_per_call(busy.server_cpu_s + busy.client_cpu_s) - floor_ms
    whole_ms = whole_batches[0].percentile_ms(50)
    tail_needs = CALLERS[-1] / (TARGET_TAIL * whole_ms) * 1e3
    return [
        "",
        "## What the targets ask of this machine",
        "",
        f"- **Ceiling.** With {cores} cores, Python gRPC (grpcio) alone costs {grpc_ms:.2f} ms of CPU per "
        f"call at {CALLERS[-1]} callers (the bare echo rows, server and raw callers together), and the engine "
        f"at least {engines[cheapest]:.2f} ms per example (the cheapest measured: {cheapest}). Even if "
        f"hessd's own code, server and SDK, cost nothing and every core worked for the benchmark, "
        f"{CALLERS[-1]} callers would get at most {cores} / {floor_ms:.2f} ms = {ceiling:,.0f} calls/s.",
        f"- **Scaling and small call together.** ≥ {TARGET_SCALING:g}× one caller's throughput needs one "
        f"caller to take at least {TARGET_SCALING:g} / {ceiling:,.0f} calls/s = {needed_ms:.2f} ms per call; "
        f"the small-call target lets it take at most {TARGET_SMALL_CALL:g} × ({echo_ms:.3f} + {inproc_ms:.3f}) "
        f"= {allowed_ms:.2f} ms (reading one caller's mean as its p50; here "
        f"{statistics.fmean(one.latencies_s) * 1e3:.2f} and {one.percentile_ms(50):.2f} ms). Both hold only "
        f"if hessd's own CPU per call at {CALLERS[-1]} callers, server and SDK together, is at most "
        f"{cores} × {allowed_ms:.2f} / {TARGET_SCALING:g} − {floor_ms:.2f} = {hessd_allowed_ms:.3f} ms; "
        f"measured: {hessd_ms:.2f} ms (all CPU per call of the server and the callers, less the ceiling's "
        f"{floor_ms:.2f} ms; smaller batches than B={max(alone)} are in it too).",
        f"- **The in-process baseline is warm.** Back to back, the in-process call takes {inproc_ms:.3f} ms; "
        f"after the idle a lone caller's engine has between its calls, {cold_ms:.3f} ms. Against that, "
        f"the small call is {wire_ms:.3f} / ({echo_ms:.3f} + {cold_ms:.3f}) = "
        f"{wire_ms / (echo_ms + cold_ms):.2f}× (the target's own formula takes the warm figure).",
        f"- **Tail.** {CALLERS[-1]} callers calling back to back wait {CALLERS[-1]} / throughput on average "
        f"(Little's law), so a p99 ≤ {TARGET_TAIL:g} × {whole_ms:.2f} ms needs at least "
        f"{tail_needs:,.0f} calls/s: {tail_needs / ceiling:.0%} of the ceiling, with no spread at all "
        f"(measured: {busy.throughput:,.0f} calls/s).",
    ]


def _callers_label(row: Load) -> str:
    return f"{row.callers}" if row.examples_per_call == 1 else f"{row.callers} (B={row.examples_per_call} in one call)"


def _cpu_columns(row: Load) -> str:
    return " | ".join(
        f"{row.cpu_ms_per_call(seconds):.2f}" for seconds in (row.server_cpu_s, row.event_loop_cpu_s, row.client_cpu_s)
    )


def _target(what: str, measured: str, met: bool) -> str:
    return f"- Target: {what}: measured {measured}, {'met' if met else 'NOT met'}."


TARGET_FLOOR_SHARE, TARGET_CEILING_SHARE, TARGET_P99_OVER_P50 = 1.6, 0.6, 2.0
"""The serving layer's targets at 32 callers: CPU per call against the floor, the share
of the ceiling reached, and the tail."""


def serving_layer_figures(small: dict[str, float], loads: Sequence[Load], alone: dict[int, EngineAlone]) -> list[str]:
    """The serving layer against what this machine allows, from this run's own rows: the
    small call against echo + in-process, and at 32 callers the calls/s, every process's
    CPU per call against the floor (echo server + raw callers + the engine's own CPU per
    example at the largest batch), the ceiling that floor allows, hessd's share of it,
    p50 and p99."""
    cores = os.cpu_count() or 1
    wire_ms, echo_ms, inproc_ms = (small[name] for name in SMALL_CALL_BASE)
    echo = next(row for row in loads if row.batching == ECHO and row.callers == CALLERS[-1])
    busy = next(row for row in loads if row.batching == "on" and row.callers == CALLERS[-1])
    echo_server, raw_callers = echo.cpu_ms_per_call(echo.server_cpu_s), echo.cpu_ms_per_call(echo.client_cpu_s)
    engine = alone[max(alone)].cpu_ms_per_example
    floor_ms = echo_server + raw_callers + engine
    server, sdk = busy.cpu_ms_per_call(busy.server_cpu_s), busy.cpu_ms_per_call(busy.client_cpu_s)
    ceiling = cores / floor_ms * 1e3
    small_ratio = wire_ms / (echo_ms + inproc_ms)
    floor_ratio = (server + sdk) / floor_ms
    share = busy.throughput / ceiling
    p50, p99 = busy.percentile_ms(50), busy.percentile_ms(99)
    return [
        "",
        "## The serving layer against its floor",
        "",
        f"- **One small call:** {wire_ms:.2f} ms p50 against {echo_ms:.2f} ms (echo) + {inproc_ms:.2f} ms "
        f"(in-process): **{small_ratio:.2f}×**.",
        f"- **{CALLERS[-1]} callers:** {busy.throughput:,.0f} calls/s. CPU per call, all processes: hessd "
        f"{server + sdk:.2f} ms (server {server:.2f} + SDK callers {sdk:.2f}) against a floor of "
        f"{floor_ms:.2f} ms (echo server {echo_server:.2f} + raw callers {raw_callers:.2f} + the engine's own "
        f"CPU per example at B={max(alone)}, {engine:.2f}): **{floor_ratio:.2f}× the floor**. The ceiling "
        f"for a serving layer that cost nothing is {cores} cores / {floor_ms:.2f} ms = {ceiling:,.0f} calls/s; "
        f"hessd reaches **{share:.0%}** of it. p50 {p50:.2f} ms, p99 {p99:.2f} ms: p99/p50 {p99 / p50:.2f}.",
        "",
        _target(f"small call p50 ≤ {TARGET_SMALL_CALL:g}× (echo + in-process)", f"{small_ratio:.2f}×", small_ratio <= TARGET_SMALL_CALL),
        _target(f"{CALLERS[-1]} callers: CPU per call ≤ {TARGET_FLOOR_SHARE:g}× the floor", f"{floor_ratio:.2f}×", floor_ratio <= TARGET_FLOOR_SHARE),
        _target(f"{CALLERS[-1]} callers: ≥ {TARGET_CEILING_SHARE:.0%} of the ceiling", f"{share:.0%}", share >= TARGET_CEILING_SHARE),
        _target(f"{CALLERS[-1]} callers: p99 ≤ {TARGET_P99_OVER_P50:g}× p50", f"{p99 / p50:.2f}×", p99 / p50 <= TARGET_P99_OVER_P50),
    ]
