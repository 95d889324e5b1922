"""Prometheus metrics of one server: requests by method and status, latency,
engine calls waiting, dropped, abandoned and their durations, the batcher's
batches, queue and refusals, compiled and evicted functions per model, the
state, load and warm-up time of each model version and the versions that failed,
and the process's garbage-collection pauses and frozen objects."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric

if TYPE_CHECKING:
    import grpc

MODEL_STATES = ("LOADING", "AVAILABLE", "FAILED", "UNLOADING")
"""The values of ``hessd_model_version_state``'s ``state`` label."""


class Metrics:
    """The metrics of one server, in a registry of their own.

    Attributes:
        registry: the registry holding every metric below.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "hessd_requests",
            "HessianService RPCs finished, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "hessd_request_duration_seconds",
            "Wall time of HessianService RPCs, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self._dropped = Counter(
            "hessd_dropped_engine_calls",
            "Engine calls dropped before starting because their RPC expired or was cancelled.",
            ["reason"],
            registry=self.registry,
        )
        self._abandoned = Counter(
            "hessd_abandoned_engine_calls",
            "Engine calls whose RPC expired or was cancelled while they ran; each stops at its "
            "next step, or finishes its running computation and discards the result.",
            ["reason"],
            registry=self.registry,
        )
        self._engine_time = Histogram(
            "hessd_engine_call_duration_seconds",
            "Time each engine call (a batch, or a request run alone) took on its engine thread.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self._waiting = Gauge(
            "hessd_engine_calls_waiting",
            "Engine calls waiting for a free engine thread.",
            registry=self.registry,
        )
        self._compiled = Gauge(
            "hessd_compiled_functions",
            "Functions compiled so far, by model.",
            ["model"],
            registry=self.registry,
        )
        self._version_state = Gauge(
            "hessd_model_version_state",
            "1 for the state each model version is in (LOADING, AVAILABLE, FAILED, UNLOADING).",
            ["model", "version", "state"],
            registry=self.registry,
        )
        self._load_seconds = Gauge(
            "hessd_model_load_duration_seconds",
            "Time taken to load each served model version from its files.",
            ["model", "version"],
            registry=self.registry,
        )
        self._warmup_seconds = Gauge(
            "hessd_model_warmup_duration_seconds",
            "Time taken to warm (compile) each served model version.",
            ["model", "version"],
            registry=self.registry,
        )
        self._load_failures = Counter(
            "hessd_model_load_failures",
            "Model versions that failed to load or warm, by model.",
            ["model"],
            registry=self.registry,
        )
        self._batches = Counter(
            "hessd_batches",
            "Engine calls started by the batcher, by why they started then.",
            ["reason"],
            registry=self.registry,
        )
        self._batch_size = Histogram(
            "hessd_batch_size",
            "Examples per engine call started by the batcher.",
            buckets=tuple(float(1 << i) for i in range(11)),
            registry=self.registry,
        )
        self._queue_time = Histogram(
            "hessd_queue_duration_seconds",
            "Time requests waited in the batcher's queue before their engine call started.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        self._queued = Gauge(
            "hessd_queued_requests",
            "Requests waiting in the batcher's queue for an engine thread.",
            registry=self.registry,
        )
        self._rejected = Counter(
            "hessd_rejected_requests",
            "Requests refused UNAVAILABLE because the batcher's queue was full.",
            registry=self.registry,
        )
        gc_pauses = Histogram(
            "hessd_gc_pause_seconds",
            "Time each garbage collection in the server's process took, by generation (2: a full "
            "collection); calls in flight wait meanwhile.",
            ["generation"],
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self._gc_pause_children = tuple(gc_pauses.labels(generation=str(g)) for g in range(3))
        Gauge(
            "hessd_gc_frozen_objects",
            "Objects in the garbage collector's permanent generation, which collections skip "
            "(frozen once the models are loaded).",
            registry=self.registry,
        ).set_function(gc.get_freeze_count)
        self._request_children: dict[tuple[str, grpc.StatusCode], tuple[Counter, Histogram]] = {}
        """The request counter's and latency histogram's child of each (method, code),
        resolved once: labelled children are never removed from these two."""
        self._batch_children: dict[str, Counter] = {}
        self._evictions = _EvictionsCollector()
        self.registry.register(self._evictions)
        self._http: WSGIServer | None = None

    def observe_request(
        self, method: str, code: grpc.StatusCode, seconds: float, exemplar: dict[str, str] | None = None
    ) -> None:
        """Count one finished RPC of ``method`` (e.g. ``"Hessian"``) and its duration,
        with ``exemplar`` (e.g. ``{"trace_id": ...}``) on its latency bucket; exemplars
        are served in the OpenMetrics exposition only."""
        children = self._request_children.get((method, code))
        if children is None:
            children = (
                self._requests.labels(method=method, code=code.name),
                self._latency.labels(method=method, code=code.name),
            )
            self._request_children[(method, code)] = children
        requests, latency = children
        requests.inc()
        latency.observe(seconds, exemplar)

    def call_queued(self) -> None:
        """One more engine call waits for a thread."""
        self._waiting.inc()

    def call_dequeued(self) -> None:
        """One engine call stopped waiting: it started, or was dropped while queued."""
        self._waiting.dec()

    def observe_engine_call(self, seconds: float) -> None:
        """One engine call ran ``seconds`` on its engine thread; called from that thread."""
        self._engine_time.observe(seconds)

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        """One garbage collection of ``generation`` (0, 1 or 2) took ``seconds``."""
        self._gc_pause_children[generation].observe(seconds)

    def count_dropped(self, reason: str) -> None:
        """Count one engine call dropped for ``reason``: ``"deadline"`` or ``"cancelled"``."""
        self._dropped.labels(reason=reason).inc()

    def observe_batch(self, reason: str, examples: int) -> None:
        """Count one engine call started by the batcher for ``reason``, with ``examples`` examples."""
        batches = self._batch_children.get(reason)
        if batches is None:
            batches = self._batch_children[reason] = self._batches.labels(reason=reason)
        batches.inc()
        self._batch_size.observe(examples)

    def observe_queue_time(self, seconds: float) -> None:
        """One request waited ``seconds`` in the batcher's queue."""
        self._queue_time.observe(seconds)

    def set_queued(self, requests: int) -> None:
        """``requests`` requests now wait in the batcher's queue."""
        self._queued.set(requests)

    def count_rejected(self) -> None:
        """Count one request refused because the queue was full."""
        self._rejected.inc()

    def count_abandoned(self, reason: str) -> None:
        """Count one running engine call given up for ``reason``: ``"deadline"`` or ``"cancelled"``."""
        self._abandoned.labels(reason=reason).inc()

    def track_compiles(self, model: str, compile_count: Callable[[], int]) -> None:
        """Report ``compile_count()`` as model ``model``'s compiled functions at each scrape."""
        self._compiled.labels(model=model).set_function(compile_count)

    def set_model_state(self, model: str, version: str, state: str | None) -> None:
        """Report ``version`` of ``model`` in ``state``; ``None``: the version is gone."""
        for known in MODEL_STATES:
            labels = {"model": model, "version": version, "state": known}
            if state is None:
                with contextlib.suppress(KeyError):
                    self._version_state.remove(*labels.values())
            else:
                self._version_state.labels(**labels).set(1 if known == state else 0)
        if state is None:
            for gauge in (self._load_seconds, self._warmup_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(model, version)

    def observe_load(self, model: str, version: str, load_s: float, warmup_s: float) -> None:
        """Record how long ``version`` of ``model`` took to load and to warm."""
        self._load_seconds.labels(model=model, version=version).set(load_s)
        self._warmup_seconds.labels(model=model, version=version).set(warmup_s)

    def count_load_failure(self, model: str) -> None:
        """Count one version of ``model`` that failed to load or warm."""
        self._load_failures.labels(model=model).inc()

    def track_evictions(self, model: str, evictions: Callable[[], int]) -> None:
        """Report ``evictions()`` as model ``model``'s evicted compiled functions at each scrape."""
        self._evictions.sources[model] = evictions

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` (0: a free port); returns the port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        """Stop the HTTP endpoint, if serving."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _EvictionsCollector:
    """``hessd_compiled_function_evictions_total{model}``, read from each model at scrape time."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], int]] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "hessd_compiled_function_evictions",
            "Compiled functions evicted from a model's cache (--max-compiled-functions), by model.",
            labels=["model"],
        )
        for model, evictions in self.sources.items():
            family.add_metric([model], evictions())
        yield family
