"""Traces, request ids, structured logs and exemplars, against real servers.

Spans go to OpenTelemetry's in-memory exporter through the process's tracer
provider, which this module installs (the SDK's client spans and the server's
spans of a ``trace=True`` server both use it). Each test reads the spans of its
own calls: those whose server span carries the request id it sent.
"""

from __future__ import annotations

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
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import hessd
import hessd_server as hs
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd_server.serving.observability.log_format import JsonFormatter, RequestFields
from hessd_server.serving.observability.request_context import MAX_REQUEST_ID_CHARACTERS
from wire_fixtures import RunningServer, eventually, rng_array, serving

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
