"""The dynamic batcher over the wire: requests of concurrent callers share engine
calls with the same answers, a bad request fails alone, a full queue refuses
at once, dropped requests are not computed and are counted under their own
reason, a batch stays within ``max_result_bytes``, a lone caller never waits,
and batches compile nothing new.

Batches are made deterministic by holding the server's one engine thread
(:meth:`RunningServer.hold_engine`) until every request of a test is queued;
verdicts come from results, counters and the batcher's own records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd import tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd_server.engine.execution import prepare_gradient, prepare_hvp
from hessd_server.serving.scheduling.admission import Admission
from hessd_server.serving.scheduling.batching import (
    LONE_WINDOW_S,
    Batcher,
    BatchingSettings,
    BatchRecord,
)
from hessd_server.serving.scheduling.engine_executor import DEADLINE_SLACK_S, EngineExecutor
from hessd_server.serving.scheduling.engine_pool import EngineThreadPool
from hessd_server.serving.observability.metrics import Metrics
from hessd_server.serving.main import parse_config
from support.wire_fixtures import RunningServer, eventually, rng_array, serving

QUEUE_LIMIT = 31
TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serving(
        [("demo", hs.DEMO_MODEL_SOURCE)],
        engine_threads=1,
        warmup_batch_sizes=(1, 4, 32),
        max_queue_delay_ms=600_000,
        max_queued_requests=QUEUE_LIMIT,
        max_inline_ms=600_000,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[hessd.Client]:
    with hessd.Client(server.target, timeout=TIMEOUT_S) as sdk:
        yield sdk


def _metric(server: RunningServer, name: str, **labels: str) -> float:
    return server.server.metrics.registry.get_sample_value(name, labels) or 0.0


def _queued(server: RunningServer, count: int) -> Callable[[], bool]:
    return lambda: server.server.batcher.queued == count


def _run_while_held(
    server: RunningServer, calls: list[Callable[[], Any]], queued: int
) -> tuple[list[Any], list[BatchRecord]]:
    """Start ``calls`` on threads while the engine is held, wait until ``queued`` of
    them are queued, release the engine; return each one's result or exception,
    and the records of the batches that ran after the held one."""
    release = threading.Event()
    server.hold_engine(release)
    held = len(server.server.batcher.records)
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            eventually(_queued(server, queued))
        finally:
            release.set()
        outcomes = [future.exception() or future.result() for future in futures]
    return outcomes, list(server.server.batcher.records)[held:]


def test_concurrent_mixed_requests_with_one_bad_one(server: RunningServer, client: hessd.Client) -> None:
    model = server.model("demo")
    rng = np.random.default_rng(3)
    calls: list[Callable[[], Any]] = []
    expected: list[Callable[[], Any]] = []
    for index in range(32):
        x = rng.standard_normal((1 + index % 2, 10)).astype(np.float32)
        weights = np.array([1.0 + index], np.float32)
        method = ("hessian", "evaluate", "gradient", "hvp")[index % 4]
        args: tuple[Any, ...] = (x, -x) if method == "hvp" else (x,)
        calls.append(lambda m=method, a=args, w=weights: getattr(client, m)("demo", *a, output_weights=w))
        expected.append(lambda m=method, a=args, w=weights: getattr(hs, m)(model, *a, output_weights=w))
    bad = 17
    calls[bad] = lambda: client.gradient("demo", rng_array((2, 3)))
    outcomes, records = _run_while_held(server, calls, queued=31)
    assert isinstance(outcomes[bad], hessd.ShapeError)
    for index, (outcome, reference) in enumerate(zip(outcomes, expected)):
        if index == bad:
            continue
        assert not isinstance(outcome, BaseException), outcome
        for got, want in zip(_arrays(outcome), _arrays(reference())):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert any(len(record.methods) > 1 for record in records), records
    assert sum(len(record.methods) for record in records) == 31
    assert {record.reason for record in records} <= {"engine_free", "full"}


def test_a_failing_batch_is_retried_one_request_at_a_time(server: RunningServer) -> None:
    model = server.model("demo")
    batcher = server.server.batcher
    x = rng_array((1, 10), seed=4)
    good = prepare_hvp(model, x, x, output_weights=None, wrt=None, precision=None)
    broken = dataclasses.replace(good, tangent=rng_array((1, 7)))  # passed no check: fails in the engine
    release = threading.Event()
    server.hold_engine(release)
    held = len(batcher.records)
    futures = [
        asyncio.run_coroutine_threadsafe(batcher.compute(None, "test", model, lambda c=call: c, 1, 0), server.loop)
        for call in (good, broken, good)
    ]
    eventually(_queued(server, 3))
    release.set()
    outcomes = [future.exception(TIMEOUT_S) or future.result() for future in futures]
    assert [len(record.methods) for record in list(batcher.records)[held:]] == [3]
    assert isinstance(outcomes[1], Exception)
    for outcome in (outcomes[0], outcomes[2]):
        np.testing.assert_allclose(outcome, hs.hvp(model, x, x), rtol=1e-5, atol=1e-6)


def test_a_full_queue_refuses_at_once_while_the_engine_is_busy(
    server: RunningServer, client: hessd.Client
) -> None:
    rejected = _metric(server, "hessd_rejected_requests_total")
    release = threading.Event()
    server.hold_engine(release)
    x = rng_array((1, 10))
    with ThreadPoolExecutor(QUEUE_LIMIT) as pool:
        try:
            futures = [pool.submit(client.gradient, "demo", x) for _ in range(QUEUE_LIMIT)]
            eventually(_queued(server, QUEUE_LIMIT))
            with pytest.raises(hessd.UnavailableError, match="overloaded.*backoff"):
                client.gradient("demo", x)
            assert not release.is_set() and server.server.batcher.queued == QUEUE_LIMIT
        finally:
            release.set()
        results = [future.result() for future in futures]
    assert _metric(server, "hessd_rejected_requests_total") > rejected  # the SDK retries UNAVAILABLE with backoff
    assert all(np.array_equal(result, results[0]) for result in results)


def test_expired_and_cancelled_queued_requests_are_dropped_under_their_own_reason(
    server: RunningServer, client: hessd.Client
) -> None:
    dropped = {r: _metric(server, "hessd_dropped_engine_calls_total", reason=r) for r in ("deadline", "cancelled")}
    release = threading.Event()
    server.hold_engine(release)
    held = len(server.server.batcher.records)
    request = pb.GradientRequest(model_name="demo", x={"x": tensor_codec.encode(rng_array((1, 10)), field="x")})
    try:
        with server.batcher_clock() as clock, grpc.insecure_channel(server.target) as channel:
            stub = hessian_service_pb2_grpc.HessianServiceStub(channel)
            cancelled = stub.Gradient.future(request, timeout=TIMEOUT_S)
            expiring = stub.Gradient.future(request, timeout=TIMEOUT_S)
            eventually(_queued(server, 2))
            cancelled.cancel()
            eventually(_queued(server, 1))
            clock.advance(2 * TIMEOUT_S)  # the queued call's deadline passes, on the batcher's clock only
            release.set()
            error = expiring.exception()
    finally:
        release.set()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "queued" in error.details()
    assert _metric(server, "hessd_dropped_engine_calls_total", reason="deadline") == dropped["deadline"] + 1
    assert _metric(server, "hessd_dropped_engine_calls_total", reason="cancelled") == dropped["cancelled"] + 1
    assert server.server.batcher.queued == 0
    assert client.gradient("demo", rng_array((1, 10))).shape == (1, 10)
    records = list(server.server.batcher.records)[held:]
    assert [record.methods for record in records] == [("Gradient",)]


@pytest.mark.parametrize("timeout_s", [0.5, 2.0])
def test_a_queued_call_whose_callers_deadline_passes_is_dropped_as_deadline(
    server: RunningServer, timeout_s: float
) -> None:
    """The real path: the caller's own deadline ends the call, a moment before the server's."""
    dropped = {r: _metric(server, "hessd_dropped_engine_calls_total", reason=r) for r in ("deadline", "cancelled")}

    def drops() -> float:
        return sum(_metric(server, "hessd_dropped_engine_calls_total", reason=r) for r in dropped)

    release = threading.Event()
    server.hold_engine(release)
    held = len(server.server.batcher.records)
    try:
        with hessd.Client(server.target, timeout=timeout_s) as hurried, pytest.raises(hessd.DeadlineExceededError):
            hurried.gradient("demo", rng_array((1, 10)))
        eventually(lambda: drops() == sum(dropped.values()) + 1)
    finally:
        release.set()
    assert _metric(server, "hessd_dropped_engine_calls_total", reason="deadline") == dropped["deadline"] + 1
    assert _metric(server, "hessd_dropped_engine_calls_total", reason="cancelled") == dropped["cancelled"]
    assert [record.methods for record in list(server.server.batcher.records)[held:]] == []


@pytest.mark.parametrize(
    ("before_deadline_s", "reason"), [(DEADLINE_SLACK_S / 2, "deadline"), (20 * DEADLINE_SLACK_S, "cancelled")]
)
def test_a_call_ending_just_before_its_deadline_is_dropped_as_deadline(
    server: RunningServer, before_deadline_s: float, reason: str
) -> None:
    """The caller's deadline ends its call a moment before the server's copy of it
    passes; the batcher's clock stands at that moment when the call ends."""
    dropped = _metric(server, "hessd_dropped_engine_calls_total", reason=reason)
    release = threading.Event()
    server.hold_engine(release)
    request = pb.GradientRequest(model_name="demo", x={"x": tensor_codec.encode(rng_array((1, 10)), field="x")})
    try:
        with server.batcher_clock() as clock, grpc.insecure_channel(server.target) as channel:
            call = hessian_service_pb2_grpc.HessianServiceStub(channel).Gradient.future(request, timeout=TIMEOUT_S)
            eventually(_queued(server, 1))
            clock.advance(TIMEOUT_S - before_deadline_s)
            call.cancel()
            eventually(lambda: _metric(server, "hessd_dropped_engine_calls_total", reason=reason) == dropped + 1)
            assert server.server.batcher.queued == 0
    finally:
        release.set()


def test_an_expired_request_queued_behind_a_live_one_never_joins_its_batch(server: RunningServer) -> None:
    """Both wait behind a held engine; when it frees, the live one's batch starts and
    the expired one, of the same batch key, is dropped instead of computed with it."""
    dropped = _metric(server, "hessd_dropped_engine_calls_total", reason="deadline")
    release = threading.Event()
    server.hold_engine(release)
    held = len(server.server.batcher.records)
    request = pb.GradientRequest(model_name="demo", x={"x": tensor_codec.encode(rng_array((1, 10)), field="x")})
    try:
        with server.batcher_clock() as clock, grpc.insecure_channel(server.target) as channel:
            stub = hessian_service_pb2_grpc.HessianServiceStub(channel)
            live = stub.Gradient.future(request, timeout=TIMEOUT_S)
            eventually(_queued(server, 1))
            expiring = stub.Gradient.future(request, timeout=TIMEOUT_S / 2)
            eventually(_queued(server, 2))
            clock.advance(3 * TIMEOUT_S / 4)  # past the second call's deadline, not the first's
            release.set()
            reply, error = live.result(), expiring.exception()
    finally:
        release.set()
    assert tensor_codec.decode(reply.gradient, field="gradient").shape == (1, 10)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "queued" in error.details()
    assert [record.methods for record in list(server.server.batcher.records)[held:]] == [("Gradient",)]
    assert _metric(server, "hessd_dropped_engine_calls_total", reason="deadline") == dropped + 1


def test_a_batch_never_holds_more_results_than_max_result_bytes(
    server: RunningServer, client: hessd.Client
) -> None:
    model = server.model("demo")
    config = model.config
    example_bytes = (1 + 10 + 10 * 10) * 4  # value, gradient and Hessian block of one float32 example
    model.config = dataclasses.replace(config, max_result_bytes=4 * example_bytes)
    try:
        xs = [rng_array((size, 10), seed=20 + index) for index, size in enumerate((2, 1, 2, 1, 1))]
        outcomes, records = _run_while_held(server, [lambda x=x: client.hessian("demo", x) for x in xs], queued=5)
    finally:
        model.config = config
    assert [record.examples for record in records] == [4, 3]  # (2, 1, 1), then (2, 1)
    for x, outcome in zip(xs, outcomes):
        np.testing.assert_allclose(outcome, hs.hessian(model, x), rtol=1e-5, atol=1e-6)


def test_a_lone_caller_never_waits_for_the_queue_delay(server: RunningServer, client: hessd.Client) -> None:
    """Each kind runs on an engine thread at once the first time, then on the event loop."""
    time.sleep(LONE_WINDOW_S)
    held = len(server.server.batcher.records)
    x = rng_array((2, 10), seed=10)
    for _ in range(5):
        client.hessian("demo", x)
        client.hvp("demo", x, x)
    records = list(server.server.batcher.records)[held:]
    assert [record.reason for record in records] == ["idle"] * 2 + ["inline"] * 8


def test_a_lone_call_on_the_event_loop_answers_as_the_engine_thread_does(
    server: RunningServer, client: hessd.Client
) -> None:
    time.sleep(LONE_WINDOW_S)
    model = server.model("demo")
    held = len(server.server.batcher.records)
    x = rng_array((3, 10), seed=11)
    compiled = model.metadata().compile_count
    answers = [client.evaluate("demo", x) for _ in range(3)]
    assert [record.reason for record in list(server.server.batcher.records)[held:]] == ["idle", "inline", "inline"]
    assert model.metadata().compile_count == compiled
    reference = hs.evaluate(model, x)
    for answer in answers:
        for got, want in zip(answer, reference):
            np.testing.assert_array_equal(got, want)


def test_no_call_runs_on_the_event_loop_while_engine_work_runs(server: RunningServer, client: hessd.Client) -> None:
    x = rng_array((1, 10), seed=12)
    time.sleep(LONE_WINDOW_S)
    client.gradient("demo", x)
    client.gradient("demo", x)
    assert server.server.batcher.records[-1].reason == "inline"
    _, records = _run_while_held(server, [lambda: client.gradient("demo", x)] * 3, queued=3)
    assert [(record.reason, len(record.methods)) for record in records] == [("engine_free", 3)]


def test_a_call_runs_on_the_event_loop_only_after_a_while_alone() -> None:
    admission = Admission()
    assert admission.alone_for(60.0)
    with admission.admitted():
        assert admission.alone_for(0.0)
        with admission.admitted():
            assert not admission.alone_for(0.0)
        assert not admission.alone_for(60.0)
    assert admission.alone_for(0.0) and not admission.alone_for(60.0)


def test_a_call_whose_function_was_evicted_compiles_on_an_engine_thread() -> None:
    """One compiled function kept: hessian and gradient evict each other, and each call
    finds its function gone; it must not be built on the event loop."""
    with serving(
        [("demo", hs.DEMO_MODEL_SOURCE)], warmup_batch_sizes=(1, 2), max_compiled_functions=1, max_inline_ms=600_000
    ) as running, hessd.Client(running.target, timeout=TIMEOUT_S) as sdk:
        model = running.model("demo")
        x = rng_array((1, 10), seed=13)
        sdk.hessian("demo", x)
        sdk.gradient("demo", x)
        time.sleep(LONE_WINDOW_S)
        held, compiled = len(running.server.batcher.records), model.metadata().compile_count
        for _ in range(2):
            sdk.hessian("demo", x)
            sdk.gradient("demo", x)
        assert [record.reason for record in list(running.server.batcher.records)[held:]] == ["idle"] * 4
        assert model.metadata().compile_count == compiled + 4


def test_stream_items_batch_with_unary_calls(server: RunningServer, client: hessd.Client) -> None:
    x = rng_array((1, 10), seed=5)
    outcomes, records = _run_while_held(
        server,
        [lambda: list(client.stream("demo", [x])), lambda: client.hessian("demo", x)],
        queued=2,
    )
    assert np.array_equal(outcomes[0][0], outcomes[1])
    assert [sorted(record.methods) for record in records] == [["Hessian", "StreamHessian"]]


def test_batches_compile_nothing_after_warmup(server: RunningServer, client: hessd.Client) -> None:
    model = server.model("demo")
    compiled = model.metadata().compile_count
    x = rng_array((1, 10), seed=6)
    hessians, records = _run_while_held(server, [lambda: client.hessian("demo", x)] * 3, queued=3)
    gradients, more_records = _run_while_held(server, [lambda: client.gradient("demo", x)] * 7, queued=7)
    assert [record.examples for record in records + more_records] == [3, 7]
    assert model.metadata().compile_count == compiled
    np.testing.assert_allclose(hessians[0], hs.hessian(model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gradients[0], hs.gradient(model, x), rtol=1e-5, atol=1e-6)


def test_no_batching_runs_every_request_alone(server: RunningServer, client: hessd.Client) -> None:
    batcher = server.server.batcher
    batching = batcher.settings
    batcher.settings = dataclasses.replace(batching, enabled=False)
    try:
        x = rng_array((1, 10), seed=7)
        _, records = _run_while_held(server, [lambda: client.gradient("demo", x)] * 4, queued=4)
    finally:
        batcher.settings = batching
    assert [len(record.methods) for record in records] == [1, 1, 1, 1]


def test_batch_metrics_are_exported(server: RunningServer, client: hessd.Client) -> None:
    x = rng_array((1, 10), seed=8)
    _run_while_held(server, [lambda: client.gradient("demo", x)] * 2, queued=2)
    assert _metric(server, "hessd_batch_size_count") > 0
    assert _metric(server, "hessd_batch_size_bucket", le="2.0") > _metric(server, "hessd_batch_size_bucket", le="1.0")
    assert _metric(server, "hessd_queue_duration_seconds_count") > 0
    assert _metric(server, "hessd_batches_total", reason="idle") > 0
    assert server.server.metrics.registry.get_sample_value("hessd_queued_requests") == 0


def test_batching_flags_build_the_config() -> None:
    config = parse_config(["--no-batching", "--max-queue-delay-ms", "2.5", "--max-queued-requests", "9"])
    assert (config.batching, config.max_queue_delay_ms, config.max_queued_requests) == (False, 2.5, 9)
    defaults = parse_config([])
    assert defaults.batching and defaults.batch_limit == 32
    assert parse_config(["--warmup-batch-sizes", "1,8"]).batch_limit == 8
    assert defaults.max_batches_in_flight == 1
    assert parse_config(["--max-batches-in-flight", "2"]).max_batches_in_flight == 2
    with pytest.raises(SystemExit):
        parse_config(["--max-batches-in-flight", "0"])
    with pytest.raises(SystemExit):
        parse_config(["--max-queued-requests", "-1"])
    assert defaults.max_inline_ms == 0.0
    assert parse_config(["--max-inline-ms", "2"]).max_inline_ms == 2.0
    with pytest.raises(SystemExit):
        parse_config(["--max-inline-ms", "-1"])


class _GatedPool(EngineThreadPool):
    """Engine threads whose work waits for ``gate`` before it runs: what started,
    and with whom, is fixed while the gate is shut."""

    def __init__(self, threads: int, gate: threading.Event) -> None:
        super().__init__(threads, name="gated-engine")
        self._gate = gate

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        def gated() -> Any:
            self._gate.wait(TIMEOUT_S)
            return fn(*args, **kwargs)

        return super().submit(gated)


def _two_thread_batcher(batches_in_flight: int, pool: EngineThreadPool, delay_s: float = 600.0) -> Batcher:
    return Batcher(
        EngineExecutor(pool, Metrics()),
        Metrics(),
        BatchingSettings(
            enabled=True,
            engine_threads=2,
            batch_limit=32,
            max_queue_delay_s=delay_s,
            max_queued_requests=16,
            max_batches_in_flight=batches_in_flight,
        ),
    )


@pytest.mark.parametrize("batches_in_flight", [1, 2])
def test_requests_of_a_key_with_its_batch_in_flight_collect_for_the_next_one(
    server: RunningServer, batches_in_flight: int
) -> None:
    """With one batch in flight per key (the default), a request of a busy key queues
    although a thread is free, and the queued ones run as one batch when it ends;
    a request of another key takes the free thread. With two, the key takes both threads."""
    model = server.model("demo")
    x = rng_array((1, 10), seed=9)
    gate = threading.Event()
    pool = _GatedPool(4, gate)
    batcher = _two_thread_batcher(batches_in_flight, pool)

    def submit(method: str) -> Any:
        if method == "other key":
            call = prepare_hvp(model, x, x, output_weights=None, wrt=None, precision=None)
        else:
            call = prepare_gradient(model, x, output_weights=None, wrt=None, precision=None)
        return asyncio.run_coroutine_threadsafe(
            batcher.compute(None, method, model, lambda: call, 1, x.nbytes), server.loop
        )

    methods = ["first", "same key 0", "same key 1", "same key 2", "other key"]
    try:
        futures = []
        for method in methods:
            futures.append(submit(method))
            eventually(lambda: len(batcher.records) + batcher.queued == len(futures))
        started = [(record.reason, record.methods) for record in batcher.records]
        assert batcher.queued == 3
    finally:
        gate.set()
    outcomes = [future.result(TIMEOUT_S) for future in futures]
    pool.shutdown()
    later = [(record.reason, record.methods) for record in list(batcher.records)[2:]]
    if batches_in_flight == 1:
        assert started == [("idle", ("first",)), ("idle", ("other key",))]
        assert later == [("engine_free", ("same key 0", "same key 1", "same key 2"))]
    else:
        assert started == [("idle", ("first",)), ("idle", ("same key 0",))]
        assert later == [("engine_free", ("same key 1", "same key 2")), ("engine_free", ("other key",))]
    for outcome in outcomes[:4]:
        np.testing.assert_allclose(outcome, hs.gradient(model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outcomes[4], hs.hvp(model, x, x), rtol=1e-5, atol=1e-6)


def test_a_request_past_the_queue_delay_takes_a_free_thread_beside_its_keys_batch(
    server: RunningServer,
) -> None:
    model = server.model("demo")
    x = rng_array((1, 10), seed=10)
    call = prepare_gradient(model, x, output_weights=None, wrt=None, precision=None)
    gate = threading.Event()
    pool = _GatedPool(4, gate)
    batcher = _two_thread_batcher(1, pool, delay_s=0.0)
    try:
        futures = []
        for method in ("first", "second"):
            futures.append(
                asyncio.run_coroutine_threadsafe(
                    batcher.compute(None, method, model, lambda: call, 1, x.nbytes), server.loop
                )
            )
            eventually(lambda: len(batcher.records) == len(futures))
    finally:
        gate.set()
    outcomes = [future.result(TIMEOUT_S) for future in futures]
    pool.shutdown()
    assert [(record.reason, record.methods) for record in batcher.records] == [
        ("idle", ("first",)),
        ("delay", ("second",)),
    ]
    assert np.array_equal(outcomes[0], outcomes[1])


def _arrays(result: Any) -> tuple[np.ndarray, ...]:
    return tuple(result) if isinstance(result, tuple) else (result,)


def test_every_engine_call_is_timed_once(server: RunningServer, client: hessd.Client) -> None:
    """The engine held (a call run alone) and the batch of three that follows: two engine calls."""
    count, total = "hessd_engine_call_duration_seconds_count", "hessd_engine_call_duration_seconds_sum"
    before = _metric(server, count), _metric(server, total)
    x = rng_array((1, 10), seed=9)
    results, records = _run_while_held(server, [lambda: client.gradient("demo", x)] * 3, queued=3)
    assert [len(record.methods) for record in records] == [3]
    assert all(isinstance(result, np.ndarray) for result in results)
    assert _metric(server, count) - before[0] == 2
    assert _metric(server, total) > before[1]
