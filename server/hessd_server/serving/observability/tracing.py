"""OpenTelemetry spans of the server's calls, on with ``--trace`` and free when off.

Each ``hessd.v1`` call gets a server span named after its RPC
(``hessd.v1.HessianService/Hessian``), continuing the caller's trace when its
metadata carries a W3C ``traceparent``. Its children show where the time went:

* ``hessd.queue``: waiting in the batcher's queue for an engine thread;
* ``hessd.engine``: the engine call, with the batch's ``hessd.batch.*`` attributes
  (reason, requests, examples, key, bucket) and, under it, ``hessd.compile`` when the
  call built a function; an engine call that serves several requests belongs
  to none of them: it starts a trace of its own, linked to every request's
  span, and each request gets a ``hessd.batch`` span linked to it instead;
* ``hessd.encode``: building the reply (writing shared memory included).

The server span carries the model, its version, the request's B, D and dtype,
the reply's bytes, ``rpc.grpc.status_code`` and, on failure, ``hessd.error.reason``;
an attempt that gRPC retried for the caller also ``rpc.grpc.previous_attempts``.

Nothing here imports OpenTelemetry unless a :class:`Tracing` is built. The hook
functions (:func:`stage`, :func:`queued`, :func:`batch_started`,
:func:`engine_call`) read the current call from
:mod:`~hessd_server.serving.observability.request_context` and do nothing when it
has no trace, which is always the case with tracing off.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from hessd import tensor_codec
from hessd._version import __version__
from hessd.errors import HessdError

from ...engine import compiled
from ...engine.function_key import FunctionKey
from ...engine.model import Model
from .request_context import current

T = TypeVar("T")

TRACER_NAME = "hessd_server"
"""The instrumentation scope of the server's spans."""

PREVIOUS_ATTEMPTS_KEY = "grpc-previous-rpc-attempts"
"""Metadata gRPC sends with a retried attempt: how many attempts went before it."""

MAX_ATTEMPTS_DIGITS = 4
"""A ``grpc-previous-rpc-attempts`` longer than this (no retry policy allows it) is ignored."""

MAX_ATTRIBUTE_INT = (1 << 63) - 1
"""Shapes whose element count passes this (a hostile request's) are not recorded."""

PER_EXAMPLE_KIND = "hessian"
"""The function kind whose buckets choose a per-example strategy."""

MAX_KEY_CHARACTERS = 200
"""A batch key is recorded up to this many characters."""

_NOT_TRACED: AbstractContextManager[None] = contextlib.nullcontext()


def configure_from_environment() -> None:
    """Install OpenTelemetry's SDK as the process's tracer provider, configured by the
    standard ``OTEL_*`` variables (``OTEL_TRACES_EXPORTER``, default ``otlp``;
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``, ...),
    through the OpenTelemetry distro's configurator.

    Raises:
        ImportError: OpenTelemetry's SDK is not installed (``pip install 'hessd[otel]'``).
    """
    import os

    from opentelemetry.distro import OpenTelemetryConfigurator
    from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER

    exporters = [] if os.environ.get(OTEL_TRACES_EXPORTER) else ["otlp"]
    OpenTelemetryConfigurator().configure(trace_exporter_names=exporters)


class Tracing:
    """The server's tracer; building it imports OpenTelemetry's API.

    Args:
        tracer_provider: where spans go; ``None``: the process's global provider.
    """

    def __init__(self, tracer_provider: Any | None = None) -> None:
        from opentelemetry import context, propagate, trace

        self.api = trace
        self.context = context
        self._propagate = propagate
        self.tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider=tracer_provider)

    def request(self, service: str, method: str, request_id: str, metadata: Sequence[tuple[str, Any]]) -> RequestTrace:
        """The server span of one call of ``service``/``method``, a child of the caller's
        ``traceparent`` in ``metadata`` when it sent one."""
        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        parent = self._propagate.extract(carrier)
        attempts = carrier.get(PREVIOUS_ATTEMPTS_KEY, "")
        span = self.tracer.start_span(
            f"{service}/{method}",
            context=parent,
            kind=self.api.SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": method,
                "hessd.request_id": request_id,
            },
        )
        if attempts.isdigit() and len(attempts) <= MAX_ATTEMPTS_DIGITS:
            span.set_attribute("rpc.grpc.previous_attempts", int(attempts))
        return RequestTrace(self, span)

    def engine_call(self, function: Callable[[], T], traces: Sequence[RequestTrace]) -> Callable[[], T]:
        """``function``, run as the ``hessd.engine`` span of the requests of ``traces``."""
        attributes = traces[0].batch_attributes
        links: list[Any] = []
        if len(traces) == 1:
            parent = traces[0].context
        else:
            parent = self.context.Context()
            links = [self.api.Link(trace.span.get_span_context()) for trace in traces]
        engine = self.tracer.start_span("hessd.engine", context=parent, links=links, attributes=attributes)
        batches = []
        if len(traces) > 1:
            link = [self.api.Link(engine.get_span_context())]
            batches = [
                self.tracer.start_span("hessd.batch", context=trace.context, links=link, attributes=attributes)
                for trace in traces
            ]

        def ran_at(key: FunctionKey) -> None:
            engine.set_attribute("hessd.batch.bucket", key.batch)

        def traced() -> T:
            token = self.context.attach(self.api.set_span_in_context(engine))
            try:
                with compiled.builds_watched(self._compile_span), compiled.runs_watched(ran_at):
                    return function()
            except BaseException as error:
                _failed(self.api, engine, error)
                raise
            finally:
                self.context.detach(token)
                engine.end()
                for span in batches:
                    span.end()

        return traced

    @contextlib.contextmanager
    def _compile_span(self, model: Model, key: FunctionKey) -> Iterator[None]:
        """A ``hessd.compile`` span around building ``model``'s function for ``key``,
        under the engine span current on this thread; it names the per-example strategy
        the bucket took, when the build chose one."""
        with self.tracer.start_as_current_span(
            "hessd.compile",
            attributes={
                "hessd.model.name": model.name,
                "hessd.compile.kind": key.kind,
                "hessd.compile.batch": key.batch,
                "hessd.compile.precision": key.precision,
            },
        ) as span:
            yield
            strategy = model.strategy_choices.get((key.precision, key.batch))
            if key.kind == PER_EXAMPLE_KIND and strategy is not None:
                span.set_attribute("hessd.strategy", strategy)


class RequestTrace:
    """The spans of one call: its server span and the children it gets on its way.

    Attributes:
        span: the server span.
        context: an OpenTelemetry context whose current span is ``span``.
        trace_id: the trace id, 32 hex digits.
        batch_attributes: the ``hessd.batch.*`` attributes of the batch it joined.
    """

    def __init__(self, tracing: Tracing, span: Any) -> None:
        self.tracing = tracing
        self.span = span
        self.context = tracing.api.set_span_in_context(span)
        self.trace_id = tracing.api.format_trace_id(span.get_span_context().trace_id)
        self.batch_attributes: dict[str, Any] = {}
        self._queue: Any = None

    def describe(self, request: Any) -> None:
        """Note the request's model and the B, D (elements per example) and dtype of its
        first input, as sent: a request the server refuses is described too."""
        model = getattr(request, "model_name", "")
        if model:
            self.span.set_attribute("hessd.model.name", model)
        inputs = getattr(request, "x", None)
        if not inputs:
            return
        tensor = next(iter(inputs.values()))
        shape = list(tensor.shape)
        if shape and math.prod(shape) <= MAX_ATTRIBUTE_INT:
            self.span.set_attribute("hessd.batch_size", shape[0])
            self.span.set_attribute("hessd.dimension", math.prod(shape[1:]))
        with contextlib.suppress(HessdError):
            self.span.set_attribute("hessd.dtype", tensor_codec.dtype_name(tensor.dtype, field="x"))

    def note_model(self, model: str, version: str) -> None:
        """Note the model and version that serve the call."""
        self.span.set_attribute("hessd.model.name", model)
        self.span.set_attribute("hessd.model.version", version)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """A child span ``name`` for the block it wraps (never made current, so that it may
        wrap an ``await``); it records an exception that escapes."""
        span = self.tracing.tracer.start_span(name, context=self.context)
        try:
            yield
        except BaseException as error:
            _failed(self.tracing.api, span, error)
            raise
        finally:
            span.end()

    def queue_started(self) -> None:
        self._queue = self.tracing.tracer.start_span("hessd.queue", context=self.context)

    def queue_ended(self) -> None:
        if self._queue is not None:
            self._queue.end()
            self._queue = None

    def finish(self, code: Any, error: BaseException | None, reason: str, reply_bytes: int) -> None:
        """End the server span with the call's status ``code`` (a ``grpc.StatusCode``)."""
        self.queue_ended()
        span = self.span
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if reply_bytes:
            span.set_attribute("hessd.result_bytes", reply_bytes)
        if reason:
            span.set_attribute("hessd.error.reason", reason)
        if error is not None:
            _failed(self.tracing.api, span, error, reason)
        elif code.value[0]:
            span.set_status(self.tracing.api.Status(self.tracing.api.StatusCode.ERROR, code.name))
        span.end()

    def exemplar(self) -> dict[str, str] | None:
        """The exemplar labels of this call's latency (its trace id), if the trace is sampled."""
        context = self.span.get_span_context()
        if not context.trace_flags.sampled:
            return None
        return {"trace_id": self.trace_id}


def _failed(api: Any, span: Any, error: BaseException, reason: str = "") -> None:
    span.record_exception(error)
    span.set_status(api.Status(api.StatusCode.ERROR, reason or type(error).__name__))


def current_trace() -> RequestTrace | None:
    """The current call's trace, or ``None`` (tracing off, or no call)."""
    request = current()
    return None if request is None else request.trace


def stage(name: str) -> AbstractContextManager[Any]:
    """A child span ``name`` of the current call for the block it wraps; a no-op when
    the call is not traced."""
    trace = current_trace()
    return _NOT_TRACED if trace is None else trace.stage(name)


def queued() -> RequestTrace | None:
    """The current call's trace, its ``hessd.queue`` span started; ``None`` when not traced."""
    trace = current_trace()
    if trace is not None:
        trace.queue_started()
    return trace


def batch_started(
    traces: Sequence[RequestTrace | None], reason: str, examples: int, group: Any
) -> None:
    """The requests of ``traces`` leave the queue as one batch of ``examples`` examples
    started for ``reason``; ``group`` is its batch key, (model id, stack key), or
    ``None`` for work that runs alone."""
    attributes: dict[str, Any] | None = None
    for trace in traces:
        if trace is None:
            continue
        if attributes is None:
            attributes = {
                "hessd.batch.reason": reason,
                "hessd.batch.requests": len(traces),
                "hessd.batch.examples": examples,
                "hessd.batch.key": "alone" if group is None else str(group[1])[:MAX_KEY_CHARACTERS],
            }
        trace.queue_ended()
        trace.batch_attributes = attributes


def engine_call(function: Callable[[], T], traces: Sequence[RequestTrace | None]) -> Callable[[], T]:
    """``function`` as the engine call of the requests of ``traces``: as it is when none
    is traced, else run inside their ``hessd.engine`` span (see :meth:`Tracing.engine_call`)."""
    live = [trace for trace in traces if trace is not None]
    if not live:
        return function
    return live[0].tracing.engine_call(function, live)
