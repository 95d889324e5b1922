"""Traces, request ids, structured logs and exemplars, against real servers.

Spans go to OpenTelemetry's in-memory exporter through the process's tracer
provider, which this module installs (the SDK's client spans and the server's
spans of a ``trace=True`` server both use it). Each test reads the spans of its
own calls: those whose server span carries the request id it sent.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hessd
import hessd_server as hs
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd_server.serving.observability import request_context
from hessd_server.serving.observability.log_format import JsonFormatter, RequestFields, TextFormatter
from hessd_server.serving.observability.request_context import MAX_REQUEST_ID_CHARACTERS
from support.wire_fixtures import RunningServer, eventually, rng_array, serving

TIMEOUT_S = 120.0
HESSIAN = "hessd.v1.HessianService/Hessian"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture(scope="module")
def server(spans: InMemorySpanExporter) -> Iterator[RunningServer]:
    with serving(
        [("demo", hs.DEMO_MODEL_SOURCE)],
        trace=True,
        engine_threads=1,
        warmup_batch_sizes=(1, 4, 32),
        max_queue_delay_ms=600_000,
        metrics_port=0,
        freeze_heap=False,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[hessian_service_pb2_grpc.HessianServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield hessian_service_pb2_grpc.HessianServiceStub(channel)


def _hessian_request(x: np.ndarray, **fields: Any) -> pb.HessianRequest:
    return pb.HessianRequest(model_name="demo", x={"": hessd.tensor_codec.encode(x, field="x")}, **fields)


def _server_span(spans: InMemorySpanExporter, request_id: str) -> ReadableSpan:
    """The finished server span of the call with ``request_id``."""
    eventually(lambda: any(_request_id(s) == request_id for s in spans.get_finished_spans()), TIMEOUT_S)
    (span,) = [s for s in spans.get_finished_spans() if _request_id(s) == request_id]
    return span


def _request_id(span: ReadableSpan) -> str | None:
    return None if span.attributes is None else span.attributes.get("hessd.request_id")  # type: ignore[return-value]


def _children(spans: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        s for s in spans.get_finished_spans() if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


def _names(spans: list[ReadableSpan]) -> list[str]:
    return sorted(span.name for span in spans)


def _call_with_id(call: Callable[..., Any], request: Any, request_id: str) -> tuple[Any, dict[str, str]]:
    """``call``'s reply to ``request`` sent with ``x-request-id``, and its trailing metadata."""
    reply, rpc = call.with_call(request, metadata=(("x-request-id", request_id),), timeout=TIMEOUT_S)
    return reply, dict(rpc.trailing_metadata())


def test_unary_call_has_a_server_span_with_engine_and_encode_children(
    spans: InMemorySpanExporter, stub: Any
) -> None:
    x = rng_array((3, 10), seed=1)
    reply, trailing = _call_with_id(stub.Hessian, _hessian_request(x), "unary-1")
    assert trailing["x-request-id"] == "unary-1"
    span = _server_span(spans, "unary-1")
    assert span.name == HESSIAN
    assert span.kind == trace.SpanKind.SERVER
    attributes = dict(span.attributes or {})
    assert attributes["hessd.model.name"] == "demo"
    assert attributes["hessd.model.version"] == "1"
    assert (attributes["hessd.batch_size"], attributes["hessd.dimension"]) == (3, 10)
    assert attributes["hessd.dtype"] == "float32"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["hessd.result_bytes"] == reply.ByteSize()
    children = _children(spans, span)
    assert "hessd.engine" in _names(children) and "hessd.encode" in _names(children)
    for child in children:
        assert span.start_time <= child.start_time <= child.end_time <= span.end_time
    (engine,) = [child for child in children if child.name == "hessd.engine"]
    assert engine.attributes["hessd.batch.examples"] == 3
    assert engine.attributes["hessd.batch.requests"] == 1
    assert engine.attributes["hessd.batch.bucket"] == 4, "3 examples run in the warmed bucket of 4"


def test_chunked_call_has_its_stages(spans: InMemorySpanExporter, stub: Any, server: RunningServer) -> None:
    x = rng_array((4, 10), seed=2)
    chunks = stub.HessianChunked(_hessian_request(x), metadata=(("x-request-id", "chunked-1"),), timeout=TIMEOUT_S)
    received = sum(len(chunk.SerializeToString()) for chunk in chunks)
    assert dict(chunks.trailing_metadata())["x-request-id"] == "chunked-1"
    span = _server_span(spans, "chunked-1")
    assert span.name == "hessd.v1.HessianService/HessianChunked"
    assert span.attributes["hessd.result_bytes"] == received
    assert {"hessd.engine", "hessd.encode"} <= set(_names(_children(spans, span)))


def test_stream_items_are_children_of_the_stream_span(spans: InMemorySpanExporter, stub: Any) -> None:
    items = [_hessian_request(rng_array((1 + i, 10), seed=i)) for i in range(3)]
    replies = stub.StreamHessian(iter(items), metadata=(("x-request-id", "stream-1"),), timeout=TIMEOUT_S)
    assert [reply.index for reply in replies] == [0, 1, 2]
    span = _server_span(spans, "stream-1")
    assert span.name == "hessd.v1.HessianService/StreamHessian"
    engines = [child for child in _children(spans, span) if child.name == "hessd.engine"]
    assert sorted(engine.attributes["hessd.batch.examples"] for engine in engines) == [1, 2, 3]


def test_a_batch_of_several_callers_links_to_each_request(
    spans: InMemorySpanExporter, stub: Any, server: RunningServer
) -> None:
    release = threading.Event()
    server.hold_engine(release)
    ids = [f"batched-{i}" for i in range(3)]
    with ThreadPoolExecutor(len(ids)) as pool:
        futures = [
            pool.submit(_call_with_id, stub.Gradient, _gradient_request(rng_array((1, 10), seed=i)), request_id)
            for i, request_id in enumerate(ids)
        ]
        try:
            eventually(lambda: server.server.batcher.queued == len(ids))
        finally:
            release.set()
        for future in futures:
            future.result()
    requests = {request_id: _server_span(spans, request_id) for request_id in ids}
    request_spans = {span.context.span_id for span in requests.values()}
    (engine,) = [
        s
        for s in spans.get_finished_spans()
        if s.name == "hessd.engine" and {link.context.span_id for link in s.links} == request_spans
    ]
    assert engine.parent is None
    assert engine.attributes["hessd.batch.requests"] == 3
    assert engine.attributes["hessd.batch.examples"] == 3
    assert engine.attributes["hessd.batch.bucket"] == 4
    for span in requests.values():
        children = _children(spans, span)
        (queue,) = [child for child in children if child.name == "hessd.queue"]
        (batch,) = [child for child in children if child.name == "hessd.batch"]
        assert [link.context.span_id for link in batch.links] == [engine.context.span_id]
        assert queue.end_time <= batch.start_time
        assert "hessd.engine" not in _names(children)


def test_a_compile_is_a_child_of_its_engine_call(spans: InMemorySpanExporter, stub: Any) -> None:
    request = _gradient_request(rng_array((2, 10), seed=5), precision=hessd.tensor_codec.encode_precision("float64"))
    _call_with_id(stub.Gradient, request, "compile-1")
    span = _server_span(spans, "compile-1")
    (engine,) = [child for child in _children(spans, span) if child.name == "hessd.engine"]
    (compile_span,) = _children(spans, engine)
    assert compile_span.name == "hessd.compile"
    assert compile_span.attributes["hessd.compile.kind"] == "gradient"
    assert compile_span.attributes["hessd.compile.precision"] == "float64"
    assert "hessd.strategy" not in compile_span.attributes
    _call_with_id(stub.Gradient, request, "compile-2")
    (engine,) = [child for child in _children(spans, _server_span(spans, "compile-2")) if child.name == "hessd.engine"]
    assert _children(spans, engine) == []


def test_a_hessian_compile_names_its_strategy(spans: InMemorySpanExporter, stub: Any, server: RunningServer) -> None:
    float64 = hessd.tensor_codec.encode_precision("float64")
    _call_with_id(stub.Hessian, _hessian_request(rng_array((3, 10), seed=7), precision=float64), "strategy-1")
    (engine,) = [child for child in _children(spans, _server_span(spans, "strategy-1")) if child.name == "hessd.engine"]
    (compile_span,) = _children(spans, engine)
    bucket = compile_span.attributes["hessd.compile.batch"]
    assert compile_span.attributes["hessd.compile.kind"] == "hessian"
    assert compile_span.attributes["hessd.strategy"] == server.model("demo").strategy_choices["float64", bucket]


def test_an_error_records_its_status_reason_and_request_id(spans: InMemorySpanExporter, server: RunningServer) -> None:
    with hessd.Client(server.target, timeout=TIMEOUT_S) as client:
        with pytest.raises(hessd.ShapeError) as raised:
            client.gradient("demo", rng_array((2, 3)))
    request_id = raised.value.request_id
    assert request_id is not None and len(request_id) == 32 and int(request_id, 16) >= 0
    span = _server_span(spans, request_id)
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.attributes["hessd.error.reason"] == "SHAPE_MISMATCH"
    assert span.status.status_code == trace.StatusCode.ERROR
    assert any(event.name == "exception" for event in span.events)


def test_the_sdk_span_is_the_parent_of_the_server_span(spans: InMemorySpanExporter, server: RunningServer) -> None:
    tracer = trace.get_tracer("caller")
    with hessd.Client(server.target, timeout=TIMEOUT_S) as client:
        with tracer.start_as_current_span("caller") as caller:
            client.hessian("demo", rng_array((2, 10), seed=6))
    finished = spans.get_finished_spans()
    (client_span,) = [s for s in finished if s.parent is not None and s.parent.span_id == caller.get_span_context().span_id]
    assert client_span.name == HESSIAN
    assert client_span.kind == trace.SpanKind.CLIENT
    assert client_span.attributes["rpc.grpc.status_code"] == 0
    (server_span,) = [s for s in finished if s.parent is not None and s.parent.span_id == client_span.context.span_id]
    assert server_span.name == HESSIAN and server_span.kind == trace.SpanKind.SERVER
    assert server_span.context.trace_id == caller.get_span_context().trace_id


def test_the_sdk_span_of_a_failed_call_records_reason_and_request_id(
    spans: InMemorySpanExporter, server: RunningServer
) -> None:
    tracer = trace.get_tracer("caller")
    with hessd.Client(server.target, timeout=TIMEOUT_S) as client:
        with tracer.start_as_current_span("caller") as caller, pytest.raises(hessd.ModelNotFoundError) as raised:
            client.gradient("no-such-model", rng_array((1, 10)))
    (client_span,) = [
        s for s in spans.get_finished_spans() if s.parent is not None and s.parent.span_id == caller.get_span_context().span_id
    ]
    assert client_span.attributes["hessd.error.reason"] == raised.value.reason
    assert client_span.attributes["hessd.request_id"] == raised.value.request_id
    assert client_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.parametrize(
    "sent", ["", "x" * (MAX_REQUEST_ID_CHARACTERS + 1), "with space", 'quote"d', '{"level": "ERROR"}']
)
def test_an_unusable_request_id_is_replaced(stub: Any, sent: str) -> None:
    metadata = (("x-request-id", sent),)
    _, rpc = stub.Gradient.with_call(_gradient_request(rng_array((1, 10))), metadata=metadata, timeout=TIMEOUT_S)
    request_id = dict(rpc.trailing_metadata())["x-request-id"]
    assert request_id != sent and len(request_id) == 32 and int(request_id, 16) >= 0


def test_request_ids_round_trip_on_errors_and_reach_json_logs(stub: Any) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestFields())
    logger = logging.getLogger("hessd_server")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            _call_with_id(stub.Gradient, _gradient_request(rng_array((2, 3))), "json-log-1")
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)
    assert dict(raised.value.trailing_metadata())["x-request-id"] == "json-log-1"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [line for line in lines if line["request_id"] == "json-log-1"]
    assert line["logger"] == "hessd_server.requests"
    assert line["code"] == "INVALID_ARGUMENT" and line["reason"] == "SHAPE_MISMATCH"
    assert (line["model"], line["version"], line["method"]) == ("demo", "1", "Gradient")
    assert len(line["trace_id"]) == 32 and line["level"] == "INFO"
    assert line["time"].endswith("+00:00") and "Gradient refused" in line["message"]


def test_latency_exemplars_carry_trace_ids_in_openmetrics(spans: InMemorySpanExporter, stub: Any, server: RunningServer) -> None:
    _call_with_id(stub.Gradient, _gradient_request(rng_array((1, 10))), "exemplar-1")
    trace_id = trace.format_trace_id(_server_span(spans, "exemplar-1").context.trace_id)
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
        assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
        openmetrics = reply.read().decode()
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
        classic = reply.read().decode()
    gradient_buckets = [
        line for line in openmetrics.splitlines()
        if line.startswith('hessd_request_duration_seconds_bucket{code="OK"') and 'method="Gradient"' in line
    ]
    assert any(f'# {{trace_id="{trace_id}"}}' in line for line in gradient_buckets), gradient_buckets
    assert "trace_id" not in classic


def _gradient_request(x: np.ndarray, **fields: Any) -> pb.GradientRequest:
    return pb.GradientRequest(model_name="demo", x={"": hessd.tensor_codec.encode(x, field="x")}, **fields)


class _StartedSpans(SpanProcessor):
    """Counts the spans started, recording or not."""

    def __init__(self) -> None:
        self.started = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started += 1


def test_tracing_off_starts_no_span_but_keeps_request_ids(spans: InMemorySpanExporter, models_server: RunningServer) -> None:
    assert models_server.server.tracing is None
    started = _StartedSpans()
    provider = trace.get_tracer_provider()
    provider.add_span_processor(started)
    with grpc.insecure_channel(models_server.target) as channel:
        off = hessian_service_pb2_grpc.HessianServiceStub(channel)
        _, trailing = _call_with_id(off.Hessian, _hessian_request(rng_array((2, 10))), "off-1")
        with pytest.raises(grpc.RpcError) as raised:
            _call_with_id(off.Gradient, _gradient_request(rng_array((2, 3))), "off-2")
    assert trailing["x-request-id"] == "off-1"
    assert dict(raised.value.trailing_metadata())["x-request-id"] == "off-2"
    assert started.started == 0


SDK_CALL = """
import sys
import numpy as np
import hessd
with hessd.Client(sys.argv[1], timeout=120) as client:
    client.hessian("demo", np.ones((2, 10), np.float32))
    try:
        client.gradient("demo", np.ones((2, 3), np.float32))
    except hessd.ShapeError as error:
        assert error.request_id
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
assert not loaded, loaded
print("imports nothing")
"""


def test_the_sdk_imports_no_opentelemetry(models_server: RunningServer) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SDK_CALL, models_server.target],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    assert "imports nothing" in done.stdout


def test_an_sdk_call_without_a_current_span_sends_no_trace_context(
    spans: InMemorySpanExporter, server: RunningServer
) -> None:
    with hessd.Client(server.target, timeout=TIMEOUT_S) as client, pytest.raises(hessd.ShapeError) as raised:
        client.gradient("demo", rng_array((2, 3)))
    assert raised.value.request_id is not None
    assert _server_span(spans, raised.value.request_id).parent is None


def test_text_lines_name_the_call_they_are_about() -> None:
    def line(message: str) -> str:
        record = logging.LogRecord("hessd_server", logging.INFO, __file__, 1, message, None, None)
        RequestFields().filter(record)
        return TextFormatter().format(record)

    token = request_context.CURRENT.set(request_context.RequestContext("call-7", "Hessian", "demo"))
    try:
        inside = line("inside")
    finally:
        request_context.CURRENT.reset(token)
    assert inside.endswith("hessd_server: inside [request_id=call-7]")
    assert line("outside").endswith("hessd_server: outside")


@pytest.mark.parametrize(
    "metadata",
    [
        (("traceparent", "00-zz-not-a-trace-01"),),
        (("traceparent", "00-" + "f" * 32 + "-" + "0" * 16 + "-01"),),
        (("x-request-id", "a" * 5_000),),
    ],
)
def test_hostile_trace_metadata_is_ignored(
    spans: InMemorySpanExporter, stub: Any, server: RunningServer, metadata: tuple[Any, ...]
) -> None:
    x = rng_array((1, 10))
    reply, rpc = stub.Gradient.with_call(_gradient_request(x), metadata=metadata, timeout=TIMEOUT_S)
    request_id = dict(rpc.trailing_metadata())["x-request-id"]
    span = _server_span(spans, request_id)
    assert span.parent is None
    assert "rpc.grpc.previous_attempts" not in span.attributes
    gradient = hessd.tensor_codec.decode(reply.gradient, field="gradient")
    np.testing.assert_allclose(gradient, hs.gradient(server.model("demo"), x), rtol=1e-5, atol=1e-6)


def test_a_stream_items_error_carries_the_streams_request_id(spans: InMemorySpanExporter, server: RunningServer) -> None:
    items = [np.ones((1, 10), np.float32), np.ones((1, 3), np.float32), np.ones((2, 10), np.float32)]
    with hessd.Client(server.target, timeout=TIMEOUT_S) as client:
        results = list(client.stream("demo", items, return_errors=True))
    assert [type(r) for r in results] == [np.ndarray, hessd.ShapeError, np.ndarray]
    request_id = results[1].request_id
    assert request_id is not None and len(request_id) == 32 and int(request_id, 16) >= 0
    assert _server_span(spans, request_id).name == "hessd.v1.HessianService/StreamHessian"

    async def streamed() -> list[Any]:
        async with hessd.AsyncClient(server.target, timeout=TIMEOUT_S) as client:
            return [r async for r in client.stream("demo", items, return_errors=True)]

    (error,) = [r for r in asyncio.run(streamed()) if isinstance(r, hessd.HessdError)]
    assert error.request_id is not None and error.request_id != request_id
    assert _server_span(spans, error.request_id).name == "hessd.v1.HessianService/StreamHessian"


def test_a_stream_sends_the_callers_request_id_first(stub: Any) -> None:
    call = stub.StreamHessian(
        iter([_hessian_request(np.ones((1, 3), np.float32))]), metadata=(("x-request-id", "stream-7"),), timeout=TIMEOUT_S
    )
    assert dict(call.initial_metadata())["x-request-id"] == "stream-7"
    (reply,) = list(call)
    assert reply.WhichOneof("result") == "error"
