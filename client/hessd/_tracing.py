"""OpenTelemetry trace context for the SDK's calls, when the application traces.

The SDK never imports OpenTelemetry. Only when the application has imported
``opentelemetry.trace`` and a span is current does a call get a client span
of its own (named after the RPC, e.g. ``hessd.v1.HessianService/Hessian``),
whose W3C ``traceparent`` travels in the call's metadata, so that the server's
spans continue the caller's trace. Otherwise a call's metadata is left as it
is and nothing else happens.

The client span records the call's outcome: ``rpc.grpc.status_code``, and on
failure the error's ``hessd.error.reason`` and ``hessd.request_id``. gRPC's own
retries of a call that met UNAVAILABLE happen below the SDK, inside the one
call, so each attempt a server answered is a server span of its own under the
one client span, the retries marked ``rpc.grpc.previous_attempts``.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from hessd._protocol import CallMetadata
from hessd.errors import HessdError

TRACER_NAME = "hessd"
"""The instrumentation scope of the SDK's client spans."""


class _Untraced:
    """A call that no span records: its metadata as it is."""

    __slots__ = ("_metadata",)

    def __init__(self, metadata: CallMetadata) -> None:
        self._metadata = metadata

    def __enter__(self) -> CallMetadata:
        return self._metadata

    def __exit__(self, *exc: object) -> None:
        return None


class _Traced:
    """A call recorded by a client span, its metadata carrying the span's context."""

    def __init__(self, trace: Any, path: str, metadata: CallMetadata) -> None:
        from opentelemetry import propagate

        self._trace = trace
        service, _, method = path.lstrip("/").partition("/")
        self._span = trace.get_tracer(TRACER_NAME).start_span(
            path.lstrip("/"),
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self._span))
        self._metadata = (*(metadata or ()), *carrier.items())

    def __enter__(self) -> CallMetadata:
        return self._metadata

    def __exit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self._span
        if isinstance(error, HessdError):
            cause = error.__cause__
            span.set_attribute("rpc.grpc.status_code", _status_number(cause))
            span.set_attribute("hessd.error.reason", error.reason)
            if error.request_id is not None:
                span.set_attribute("hessd.request_id", error.request_id)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error.reason))
        elif isinstance(error, Exception):
            span.record_exception(error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, type(error).__name__))
        elif error is None:
            span.set_attribute("rpc.grpc.status_code", 0)
        span.end()


def traced_call(method: Any, metadata: CallMetadata) -> _Untraced | _Traced:
    """A context manager around one call of ``method`` (a gRPC multicallable or a
    method path) that yields the metadata to send: ``metadata`` itself unless a span is
    current in an application that traces, else with the ``traceparent`` of a client
    span that ends with the call."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return _Untraced(metadata)
    path = method if isinstance(method, str) else getattr(method, "_method", b"/hessd/call").decode()
    return _Traced(trace, path, metadata)


def _status_number(rpc_error: BaseException | None) -> int:
    """The numeric status code of a failed call's ``grpc.RpcError``; 2 (UNKNOWN) if none."""
    code = getattr(rpc_error, "code", None)
    if code is None:
        return 2
    return int(code().value[0])

