"""Server lifecycle and plumbing: health, reflection, metrics, dropped work, flags."""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import hessd
import hessd_server as hs
from hessd import tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd_server.serving.main import parse_config
from hessd_server.serving.server import DRAIN_QUIET_S
from hessd_server.serving.server_config import ModelSpec, ServerConfig
from support.wire_fixtures import LOAD_GATE, TRACE_GATE, RunningServer, rng_array, serving

DOCS = Path(__file__).resolve().parents[2] / "docs" / "guides" / "other-languages.md"
WAIT_S = 60.0


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    models = [("demo", hs.DEMO_MODEL_SOURCE), ("gated", "support.wire_fixtures:gated_trace_model")]
    with serving(models, engine_threads=1, max_queue_delay_ms=600_000, metrics_port=0) as running:
        yield running


def _eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_health_goes_not_serving_then_serving_then_not_serving() -> None:
    LOAD_GATE.clear()
    running = RunningServer(
        ServerConfig(
            models=(
                ModelSpec("demo", "support.wire_fixtures:gated_demo_model"),
                ModelSpec("later", "hessd_server.engine.demo_model:build_demo_model"),
            ),
            listen="127.0.0.1:0",
            warmup_batch_sizes=(1,),
        )
    )
    statuses: queue.Queue[str] = queue.Queue()
    with grpc.insecure_channel(running.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def watch() -> None:
            try:
                for reply in health.Watch(health_pb2.HealthCheckRequest(service="")):
                    statuses.put(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            except grpc.RpcError:
                statuses.put("ENDED")

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            assert statuses.get(timeout=WAIT_S) == "NOT_SERVING"
            with hessd.Client(running.target, timeout=WAIT_S) as client:
                assert client.health("hessd.v1.HessianService") == "NOT_SERVING"
                assert client.models() == ["demo", "later"]
                for name in ("demo", "later"):  # "later" waits its turn behind "demo"
                    with pytest.raises(hessd.UnavailableError, match="loading"):
                        client.hessian(name, rng_array((1, 10)))
                LOAD_GATE.set()
                assert statuses.get(timeout=WAIT_S) == "SERVING"
                assert client.health("hessd.v1.HessianService") == "SERVING"
                assert client.hessian("demo", rng_array((1, 10))).shape == (1, 10, 10)
        finally:
            LOAD_GATE.set()
            running.stop(grace=0.5)
        assert statuses.get(timeout=WAIT_S) == "NOT_SERVING"
        assert statuses.get(timeout=WAIT_S) == "ENDED"
        watcher.join(WAIT_S)


def _doc_request_json() -> str:
    match = re.search(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    assert match, f"{DOCS.name} has no JSON request body"
    return match.group(1)


def test_reflection_lists_services_and_serves_the_documented_json_call(
    server: RunningServer,
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {
            "hessd.v1.HessianService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= set(database.get_services())
        service = DescriptorPool(database).FindServiceByName("hessd.v1.HessianService")
        method = service.methods_by_name["Hessian"]
        request_type = message_factory.GetMessageClass(method.input_type)
        reply_type = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/hessd.v1.HessianService/Hessian",
            request_serializer=request_type.SerializeToString,
            response_deserializer=reply_type.FromString,
        )
        reply = json_format.MessageToDict(
            call(json_format.Parse(_doc_request_json(), request_type()))
        )
    hessian = reply["hessian"]
    assert hessian["dtype"] == "DATA_TYPE_FLOAT32"
    shape = tuple(int(size) for size in hessian["shape"])
    array = np.frombuffer(base64.b64decode(hessian["data"]), "<f4").reshape(shape)
    expected = hs.hessian(server.model("demo"), np.full((1, 10), 0.5, np.float32))
    assert np.array_equal(array, expected)


def _metric(server: RunningServer, name: str, **labels: str) -> float:
    return server.server.metrics.registry.get_sample_value(name, labels) or 0.0


def _dropped(server: RunningServer) -> float:
    return sum(
        _metric(server, "hessd_dropped_engine_calls_total", reason=reason)
        for reason in ("deadline", "cancelled")
    )


def _request() -> pb.HessianRequest:
    return pb.HessianRequest(
        model_name="demo", x={"x": tensor_codec.encode(rng_array((2, 10)), field="x")}
    )


def test_work_queued_past_its_deadline_is_dropped(server: RunningServer) -> None:
    dropped = _metric(server, "hessd_dropped_engine_calls_total", reason="deadline")
    release = threading.Event()
    server.hold_engine(release)
    try:
        with (
            server.batcher_clock() as clock,
            hessd.Client(server.target, timeout=WAIT_S) as client,
            ThreadPoolExecutor(1) as pool,
        ):
            call = pool.submit(client.hessian, "demo", rng_array((2, 10)))
            _eventually(lambda: server.server.batcher.queued == 1)
            clock.advance(2 * WAIT_S)  # the call's deadline passes, on the batcher's clock only
            release.set()
            with pytest.raises(hessd.DeadlineExceededError, match="queued"):
                call.result()
    finally:
        release.set()
    assert _metric(server, "hessd_dropped_engine_calls_total", reason="deadline") == dropped + 1
    assert _metric(server, "hessd_queued_requests") == 0


def test_work_queued_for_a_cancelled_call_is_dropped(server: RunningServer) -> None:
    dropped = _dropped(server)
    release = threading.Event()
    server.hold_engine(release)
    try:
        with grpc.insecure_channel(server.target) as channel:
            future = hessian_service_pb2_grpc.HessianServiceStub(channel).Hessian.future(_request())
            _eventually(lambda: _metric(server, "hessd_queued_requests") == 1)
            future.cancel()
            _eventually(lambda: _dropped(server) == dropped + 1)
    finally:
        release.set()
    _eventually(lambda: _metric(server, "hessd_queued_requests") == 0)
    with hessd.Client(server.target, timeout=WAIT_S) as client:
        assert client.hessian("demo", rng_array((2, 10))).shape == (2, 10, 10)


def test_metrics_endpoint_counts_requests_and_compiles(server: RunningServer) -> None:
    with hessd.Client(server.target, timeout=WAIT_S) as client:
        client.gradient("demo", rng_array((2, 10)))
        with pytest.raises(hessd.ShapeError):
            client.gradient("demo", rng_array((2, 3)))
    # A failed call's status can reach the client just before the server has counted it.
    _eventually(
        lambda: _metric(server, "hessd_requests_total", method="Gradient", code="INVALID_ARGUMENT") > 0
    )
    assert server.server.metrics_port is not None
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        text = response.read().decode()
    assert re.search(r'hessd_requests_total\{code="OK",method="Gradient"\} [1-9]', text)
    assert re.search(
        r'hessd_requests_total\{code="INVALID_ARGUMENT",method="Gradient"\} [1-9]', text
    )
    assert 'hessd_request_duration_seconds_count{code="OK",method="Gradient"}' in text
    compiled = re.search(r'hessd_compiled_functions\{model="demo"\} ([\d.]+)', text)
    assert (
        compiled and float(compiled.group(1)) == server.model("demo").metadata().compile_count > 0
    )
    assert 'hessd_compiled_function_evictions_total{model="demo"} 0.0' in text


def test_flags_build_the_config() -> None:
    config = parse_config(
        [
            "--model",
            "a=pkg.mod:build",
            "--model",
            "b=/models/b.keras",
            "--listen",
            "unix:///tmp/h.sock",
            "--listen",
            "0.0.0.0:50051",
            "--warmup-batch-sizes",
            "1,8",
            "--max-batch-size",
            "64",
            "--max-result-bytes",
            "1000000",
            "--max-message-bytes",
            "8388608",
            "--chunk-bytes",
            "65536",
            "--metrics-port",
            "0",
            "--engine-threads",
            "3",
            "--grace-seconds",
            "5",
            "--no-jit-compile",
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--tls-client-ca",
            "ca.pem",
            "--auth-token-file",
            "tokens",
            "--no-reflection",
            "--max-compiled-functions",
            "32",
        ]
    )
    assert config.models == (ModelSpec("a", "pkg.mod:build"), ModelSpec("b", "/models/b.keras"))
    assert (config.listen, config.warmup_batch_sizes, config.metrics_port) == (
        ("unix:///tmp/h.sock", "0.0.0.0:50051"),
        (1, 8),
        0,
    )
    assert (config.max_message_bytes, config.chunk_bytes, config.engine_threads) == (
        8388608,
        65536,
        3,
    )
    engine = config.engine_config()
    assert (engine.max_batch_size, engine.max_result_bytes, engine.jit_compile) == (
        64,
        1000000,
        False,
    )
    assert engine.max_compiled_functions == 32
    assert (config.tls_cert, config.tls_key, config.tls_client_ca, config.auth_token_file) == (
        "server.pem",
        "server.key",
        "ca.pem",
        "tokens",
    )
    assert config.reflection is False
    defaults = parse_config([])
    assert defaults.listen == ("127.0.0.1:50051",) and [
        spec.name for spec in defaults.served_models
    ] == ["demo"]
    assert (defaults.metrics_host, defaults.reflection, defaults.tls_cert) == ("127.0.0.1", True, None)
    assert defaults.auth_token_file is None


@pytest.mark.parametrize(
    "flags",
    [
        ["--model", "no-equals-sign"],
        ["--warmup-batch-sizes", "1,x"],
        ["--chunk-bytes", "99999999"],
        ["--max-batch-size", "12"],
        ["--model", "a=x:y", "--model", "a=x:z"],
        ["--listen", "127.0.0.1:7", "--listen", "127.0.0.1:7"],
        ["--listen", ""],
        ["--tls-cert", "server.pem"],
        ["--tls-key", "server.key"],
        ["--tls-client-ca", "ca.pem"],
        ["--max-compiled-functions", "0"],
    ],
)
def test_bad_flags_exit_with_usage(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parse_config(flags)
    assert raised.value.code == 2


def test_docs_json_is_valid_json() -> None:
    assert json.loads(_doc_request_json())["modelName"] == "demo"


def test_work_abandoned_while_running_is_counted_and_stopped_before_it_compiles(
    server: RunningServer,
) -> None:
    model = server.model("gated")
    compiled = model.metadata().compile_count
    abandoned = _metric(server, "hessd_abandoned_engine_calls_total", reason="cancelled")
    x = rng_array((3, 3))
    TRACE_GATE.reset()
    TRACE_GATE.armed = True
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = hessian_service_pb2_grpc.HessianServiceStub(channel)
            request = pb.HessianRequest(
                model_name="gated", x={"x": tensor_codec.encode(x, field="x")}
            )
            future = stub.Hessian.future(request)
            assert TRACE_GATE.entered.wait(WAIT_S)
            future.cancel()
            _eventually(
                lambda: _metric(server, "hessd_abandoned_engine_calls_total", reason="cancelled")
                == abandoned + 1
            )
    finally:
        TRACE_GATE.opened.set()
    with hessd.Client(server.target, timeout=WAIT_S) as client:
        client.gradient("demo", rng_array((2, 10)))
        assert model.metadata().compile_count == compiled, "the abandoned call compiled"
        assert np.array_equal(client.hessian("gated", x), hs.hessian(model, x))
    assert model.metadata().compile_count == compiled + 1 and TRACE_GATE.traces == 2


def _abandoned(server: RunningServer) -> dict[str, float]:
    return {
        reason: _metric(server, "hessd_abandoned_engine_calls_total", reason=reason)
        for reason in ("deadline", "cancelled")
    }


def _engine_calls_ended(server: RunningServer) -> float:
    return _metric(server, "hessd_engine_call_duration_seconds_count")


HURRIED_S = 2.0
"""A caller's deadline: long enough for its call to reach the engine thread, short enough to wait for."""


def test_a_running_call_whose_callers_deadline_passes_is_abandoned_for_its_deadline(
    server: RunningServer,
) -> None:
    """The real path: the caller's own deadline ends the call while it runs on an engine
    thread (held in its trace), a moment before the server's copy of that deadline passes."""
    model = server.model("gated")
    compiled = model.metadata().compile_count
    abandoned = _abandoned(server)
    ended = _engine_calls_ended(server)
    TRACE_GATE.reset()
    TRACE_GATE.armed = True
    try:
        with (
            hessd.Client(server.target, timeout=HURRIED_S) as hurried,
            pytest.raises(hessd.DeadlineExceededError),
        ):
            hurried.hessian("gated", rng_array((6, 3)), full=True)
        assert TRACE_GATE.entered.is_set(), "the call never reached the engine thread"
        _eventually(lambda: sum(_abandoned(server).values()) == sum(abandoned.values()) + 1)
    finally:
        TRACE_GATE.opened.set()
    assert _abandoned(server) == {"deadline": abandoned["deadline"] + 1, "cancelled": abandoned["cancelled"]}
    _eventually(lambda: _engine_calls_ended(server) == ended + 1)
    assert model.metadata().compile_count == compiled, "the abandoned call went on to compile"


def test_a_running_call_whose_caller_cancels_before_its_deadline_is_abandoned_as_cancelled(
    server: RunningServer,
) -> None:
    abandoned = _abandoned(server)
    ended = _engine_calls_ended(server)
    request = pb.HessianRequest(
        model_name="gated", x={"x": tensor_codec.encode(rng_array((7, 3)), field="x")}, full=True
    )
    TRACE_GATE.reset()
    TRACE_GATE.armed = True
    try:
        with grpc.insecure_channel(server.target) as channel:
            call = hessian_service_pb2_grpc.HessianServiceStub(channel).Hessian.future(request, timeout=WAIT_S)
            assert TRACE_GATE.entered.wait(WAIT_S)
            call.cancel()
            _eventually(lambda: sum(_abandoned(server).values()) == sum(abandoned.values()) + 1)
    finally:
        TRACE_GATE.opened.set()
    assert _abandoned(server) == {"deadline": abandoned["deadline"], "cancelled": abandoned["cancelled"] + 1}
    _eventually(lambda: _engine_calls_ended(server) == ended + 1)


def test_metadata_and_health_answer_while_a_model_compiles(server: RunningServer) -> None:
    TRACE_GATE.reset()
    TRACE_GATE.armed = True
    with hessd.Client(server.target, timeout=WAIT_S) as client, ThreadPoolExecutor(1) as caller:
        call = caller.submit(client.hessian, "gated", rng_array((5, 3)))
        try:
            assert TRACE_GATE.entered.wait(WAIT_S)
            metadata = client.metadata("gated")
            health = client.health()
            assert TRACE_GATE.inside == 1 and not call.done(), "metadata or health waited"
        finally:
            TRACE_GATE.opened.set()
        assert call.result(WAIT_S).shape == (5, 3, 3)
    assert metadata.name == "gated" and health == "SERVING"


def test_failed_calls_leave_nothing_in_flight(server: RunningServer) -> None:
    with hessd.Client(server.target, timeout=WAIT_S) as client:
        with pytest.raises(hessd.ShapeError):
            client.hessian("demo", rng_array((2, 3)))
        with pytest.raises(hessd.ModelNotFoundError):
            client.gradient("nope", rng_array((2, 10)))
        with pytest.raises(hessd.ModelNotFoundError):
            client.metadata("nope")
        with pytest.raises(hessd.ShapeError):
            list(client.stream("demo", [rng_array((1, 10)), rng_array((1, 3))]))
    _eventually(lambda: server.server.admission.in_flight == 0)


def test_a_draining_server_refuses_callers_until_they_stop_then_closes() -> None:
    """Callers that have not seen NOT_SERVING yet keep getting UNAVAILABLE (retried by
    the SDK elsewhere) for as long as they keep calling; the transport closes only once
    none has called for DRAIN_QUIET_S, so none is cut off with CANCELLED."""
    config = ServerConfig(models=(ModelSpec("demo", hs.DEMO_MODEL_SOURCE),), listen="127.0.0.1:0", warmup_batch_sizes=(1,))
    running = RunningServer(config)
    running.wait_until_serving()
    request = pb.GradientRequest(model_name="demo", x={"x": tensor_codec.encode(rng_array((1, 10)), field="x")})
    with grpc.insecure_channel(running.target, options=[("grpc.enable_retries", 0)]) as channel:
        stub = hessian_service_pb2_grpc.HessianServiceStub(channel)
        stub.Gradient(request, timeout=WAIT_S)
        stopping = asyncio.run_coroutine_threadsafe(running.server.stop(WAIT_S), running.loop)
        refusals: list[str] = []
        calling_until = time.monotonic() + 8 * DRAIN_QUIET_S
        last_sent = time.monotonic()
        while time.monotonic() < calling_until:
            last_sent = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                stub.Gradient(request, timeout=WAIT_S)
            refusals.append(f"{refused.value.code().name}: {refused.value.details()}")
            time.sleep(DRAIN_QUIET_S / 5)
        assert not stopping.done(), "the transport closed while callers were still calling"
        stopping.result(WAIT_S)
        # The last call arrived after it was sent, and the server closes no sooner than
        # DRAIN_QUIET_S after the last arrival: a causal bound, whatever the machine's load.
        assert time.monotonic() - last_sent >= DRAIN_QUIET_S
    running.close()
    assert len(refusals) >= 8 and all(r.startswith("UNAVAILABLE: the server is shutting down") for r in refusals), refusals
