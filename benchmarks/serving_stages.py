"""Where a small call's time goes inside the server, without gRPC: its stages timed
one by one on one event loop, and a cProfile of the event loop's own functions.

The server's parts are driven directly, as the gRPC face drives them: the request
bytes are decoded (``HessianRequest.FromString``), the data plane answers
(version, checks, limits, reply plan, the batcher's hand-off to an engine thread
and back), and the reply is encoded (``ReplyEncoder.reply``). Beside them the same
engine call in-process (``hs.hessian``), so the data plane's own share is its time
less the engine's.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import statistics
import time

import numpy as np

import hessd_server as hs
from hessd import tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd_server.serving.data_plane import DataPlane
from hessd_server.serving.data_plane.shared_memory import SharedMemoryRegistry
from hessd_server.serving.grpc.replies import ReplyEncoder
from hessd_server.serving.observability.metrics import Metrics
from hessd_server.serving.repository.model_registry import ModelRegistry
from hessd_server.serving.scheduling.batching import Batcher, BatchingSettings
from hessd_server.serving.scheduling.engine_executor import EngineExecutor
from hessd_server.serving.scheduling.engine_pool import EngineThreadPool

from bench_methods import MID_DIM, build_mid

MODEL = "mid"
MAX_MESSAGE_BYTES = 64 << 20
PROFILE_ROWS = 12
"""Functions the profile table lists, by time spent in their own code."""


class _Pipeline:
    """One server's parts for the ``mid`` MLP, driven without gRPC."""

    def __init__(self, pool: EngineThreadPool) -> None:
        self.model = hs.load_model(build_mid())
        registry = ModelRegistry(Metrics())
        registry.add_model(MODEL, fixed=True)
        registry.set_available(MODEL, 1, self.model)
        registry.mark_ready()
        regions = SharedMemoryRegistry(max_region_bytes=1 << 20, max_regions=1)
        batcher = Batcher(
            EngineExecutor(pool, Metrics()),
            Metrics(),
            BatchingSettings(
                enabled=True, engine_threads=1, batch_limit=32, max_queue_delay_s=0.02, max_queued_requests=64
            ),
        )
        self.plane = DataPlane(registry, batcher, regions, max_message_bytes=MAX_MESSAGE_BYTES)
        self.replies = ReplyEncoder(chunk_bytes=1 << 20, regions=regions)
        self.x = np.random.default_rng(0).standard_normal((1, MID_DIM)).astype(np.float32)
        self.request = pb.HessianRequest(
            model_name=MODEL, x={"x": tensor_codec.encode(self.x, field="x")}
        ).SerializeToString()

    async def call(self, took: dict[str, list[float]] | None = None) -> bytes:
        """One small call through decode, the data plane and encode; each stage's
        seconds appended to ``took`` by stage name."""
        start = time.perf_counter()
        request = pb.HessianRequest.FromString(self.request)
        decoded = time.perf_counter()
        answer = await self.plane.second_order("Hessian", request, None)
        answered = time.perf_counter()
        reply = self.replies.reply(
            pb.HessianResponse(model_version=answer.model_version), {"hessian": answer.result.hessian}, answer.reply
        )
        if took is not None:
            took["decode the request"].append(decoded - start)
            took["data plane, hand-off and engine"].append(answered - decoded)
            took["encode the reply"].append(time.perf_counter() - answered)
        return reply


async def _calls(pipeline: _Pipeline, seconds: float, took: dict[str, list[float]] | None = None) -> int:
    calls, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        await pipeline.call(took)
        calls += 1
    return calls


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def _engine_alone(pipeline: _Pipeline, seconds: float) -> list[float]:
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        hs.hessian(pipeline.model, pipeline.x)
        times.append(time.perf_counter() - start)
    return times


def _profile_rows(profile: cProfile.Profile, calls: int) -> list[str]:
    stats = pstats.Stats(profile)
    rows: list[tuple[float, int, str]] = []
    for (path, line, function), (_, count, own_s, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.rsplit("site-packages/", 1)[-1].rsplit("/server/", 1)[-1].rsplit("/client/", 1)[-1]
        rows.append((own_s, count, f"`{function}` ({where}:{line})"))
    rows.sort(reverse=True)
    return [
        f"| {name} | {count / calls:.1f} | {own_s / calls * 1e6:.1f} |"
        for own_s, count, name in rows[:PROFILE_ROWS]
    ]


def serving_stages(seconds: float) -> list[str]:
    """The stage table and the event loop's profile of a B=1 Hessian of the ``mid`` MLP,
    as Markdown lines."""
    pool = EngineThreadPool(2)
    try:
        pipeline = _Pipeline(pool)
        asyncio.run(_calls(pipeline, min(seconds, 1.0)))
        took: dict[str, list[float]] = {name: [] for name in ("decode the request", "data plane, hand-off and engine", "encode the reply")}
        calls = asyncio.run(_calls(pipeline, seconds, took))
        engine = _engine_alone(pipeline, seconds)
        profile = cProfile.Profile(time.thread_time)
        profiled = profile.runcall(asyncio.run, _calls(pipeline, seconds))
    finally:
        pool.shutdown(wait=False)
    stages = {name: _median_ms(times) for name, times in took.items()}
    engine_ms = _median_ms(engine)
    plane_ms = stages["data plane, hand-off and engine"] - engine_ms
    lines = [
        "",
        "## Where a small call's time goes in the server (no gRPC)",
        "",
        f"Median ms per stage over {calls:,} calls on one event loop; the engine's own time is "
        "the same call in-process (`hs.hessian`), and the data plane's is the difference.",
        "",
        "| stage | ms |",
        "|---|---:|",
        f"| decode the request | {stages['decode the request']:.3f} |",
        f"| data plane: version, checks, limits, reply plan, hand-off to the engine thread and back | {plane_ms:.3f} |",
        f"| engine (in-process `hs.hessian`, B=1) | {engine_ms:.3f} |",
        f"| encode the reply | {stages['encode the reply']:.3f} |",
        f"| **serving layer without gRPC** (all but the engine) | "
        f"{stages['decode the request'] + plane_ms + stages['encode the reply']:.3f} |",
        "",
        f"The event loop's own functions by CPU time in their own code (cProfile on the loop's "
        f"thread CPU clock, {profiled:,} calls; waits and the engine threads are not in it):",
        "",
        "| function | calls per request | CPU µs per request |",
        "|---|---:|---:|",
        *_profile_rows(profile, max(profiled, 1)),
    ]
    return lines
