"""The server's settings: one frozen dataclass, built by ``main()`` from flags or by tests."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.config import (
    DEFAULT_WARMUP_BATCH_SIZES,
    DEFAULT_WARMUP_METHODS,
    DEFAULT_WARMUP_PRECISIONS,
    DEMO_MODEL_SOURCE,
    STRATEGY_NAMES,
    EngineConfig,
    check_warmup_plan,
)

DEMO_MODEL_NAME = "demo"
"""The name the embedded demo model is served under when no model is configured."""

AUTO_STRATEGY = "auto"
"""The ``--strategy`` (and ``config.toml`` ``strategy``) value that takes the tuning record or the rule."""

DEFAULT_LISTEN = "127.0.0.1:50051"
"""Where the server listens when no address is configured: loopback only."""

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""gRPC's own default message size limit."""

DEFAULT_CHUNK_BYTES = 1024 * 1024
"""Data bytes per ResultChunk; chosen by ``benchmarks/bench_transfer.py`` (see docs/benchmarks/transfer.md)."""

SHARED_MEMORY_ACCESS = ("off", "local", "any")
"""Values of ``ServerConfig.shared_memory``."""

LOG_FORMATS = ("text", "json")
"""Values of ``ServerConfig.log_format``."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve.

    Attributes:
        name: the name requests use (``model_name``).
        source: what :func:`hessd_server.load_model` loads: a ``.keras`` file, a
            SavedModel directory or a ``"package.module:factory"`` reference.
    """

    name: str
    source: str


@dataclass(frozen=True)
class ServerConfig:
    """How a hessd server listens, which models it serves and within what limits.

    Attributes:
        models: the models to serve as version ``"1"``, never reloaded; when
            empty and there is no ``model_repository``, the demo model is served
            as ``"demo"``.
        model_repository: a folder of models with integer version folders,
            loaded at start-up and reloaded while serving; ``None``: none.
        repository_poll_seconds: how often the repository is scanned for
            changes; 0 scans only on SIGHUP and ReloadRepository.
        admin_token_file: a file of tokens (one per line) that ModelAdmin calls
            need; ``None`` leaves the ModelAdmin service off.
        listen: the addresses to serve on, each ``host:port`` (port 0 picks a
            free one) or ``unix:///path``; one process may serve several, e.g. a
            unix socket for a pod neighbour and a TCP port for the kubelet's
            gRPC probe. A single string is taken as a one-address tuple.
        reuse_port: let this server bind TCP ports that another socket already
            listens on (``SO_REUSEPORT``), the kernel then splitting new
            connections between them; off, binding a port in use fails at start.
        warmup_batch_sizes: batch sizes whose buckets are compiled before the
            server reports SERVING; ``None`` uses the engine's default (1, 8, 32).
        warmup_methods: the methods compiled before SERVING, names of
            ``hessd_server.engine.config.WARMUP_METHODS`` (default: hessian,
            evaluate, gradient, hvp).
        warmup_precisions: the precisions they are compiled at ("float32",
            "float64"; default float32).
        max_batch_size: largest power-of-two batch bucket (engine setting).
        max_result_bytes: results above this are refused before computing
            (engine setting).
        curvature_memory_bytes: the curvature summaries' memory budget: "auto"
            is exact when the dense blocks fit it, and estimators that would
            keep more are refused (engine setting).
        max_curvature_products: the most Hessian-vector products one matrix-free
            curvature request may take over all its examples; more are refused
            before compiling (engine setting).
        jit_compile: compile with XLA (engine setting).
        strategy: the per-example Hessian strategy every model uses, a name of
            ``hessd_server.engine.config.STRATEGY_NAMES``, or ``None`` to
            choose per bucket (engine setting): by the tuning record in
            ``tuning_cache``, else by a fixed rule. Either way every replica
            and restart takes the same strategy and computes the same bits.
        tuning_cache: a directory of tuning records shared by replicas and
            restarts (engine setting): a bucket without a record is tuned by
            timing and its choice written there once; later processes read it
            and tune nothing. ``None``: no timing, the rule's strategy.
        safe_mode: Keras safe mode when loading ``.keras`` files.
        max_message_bytes: largest gRPC message sent or received; larger
            results must use the chunked RPCs.
        chunk_bytes: data bytes per ResultChunk of a chunked reply.
        shared_memory: who may register shared-memory regions: ``"off"``,
            ``"local"`` (peers on this host: loopback or unix sockets) or ``"any"``.
        max_shared_memory_bytes: largest shared-memory region a caller may register.
        max_shared_memory_regions: most regions registered at once, all callers together.
        engine_threads: engine calls that may run at once.
        intra_op_threads: TensorFlow threads sharing one operation; 0 leaves
            TensorFlow's choice (one per core). See
            :func:`hessd_server.engine.runtime.set_thread_pools`.
        inter_op_threads: TensorFlow threads running independent operations
            at once; 0 leaves TensorFlow's choice.
        batching: group concurrent requests of one model and batch key into
            one engine call (see :mod:`hessd_server.serving.scheduling.batching`).
        max_queue_delay_ms: a request queued this long starts its batch on a
            free engine thread, or a spare one beside the running ones.
        max_batches_in_flight: batches of one model and batch key that run at
            once; while they run, that key's requests queue for the next batch.
        max_queued_requests: requests that may wait for an engine thread; past
            this, new requests fail UNAVAILABLE at once.
        max_inline_ms: a call that finds the server idle, and whose kind last ran
            alone in less than this, runs on the event loop instead of an engine
            thread; 0 (the default) runs every call on an engine thread. For
            servers with one caller at a time (see :mod:`hessd_server.serving.scheduling.batching`).
        freeze_heap: once the models are loaded, and whenever the served versions
            change, collect and then freeze the objects alive (``gc.freeze``), so that
            the garbage collector's full collections skip TensorFlow's and the models'
            long-lived objects instead of pausing every call while they walk them
            (see :mod:`hessd_server.serving.observability.garbage_collection`). Process-wide.
        grace_seconds: how long in-flight calls may take to finish on shutdown.
        max_connection_age_seconds: close each client connection (gracefully,
            with ``grace_seconds`` for its calls) after about this long, so that
            clients balancing over a DNS name re-resolve it and find new
            replicas; ``None`` keeps connections open.
        metrics_port: port of the Prometheus ``/metrics`` endpoint (0 picks a
            free one); ``None`` serves no endpoint.
        metrics_host: address the metrics endpoint binds; loopback by default,
            so metrics are not readable from other hosts unless asked.
        log_level: the process's logging level name, e.g. ``"INFO"``.
        log_format: ``"text"`` (lines for people) or ``"json"`` (one JSON object per
            line, for log pipelines; see
            :mod:`hessd_server.serving.observability.log_format`).
        trace: give every call OpenTelemetry spans (see
            :mod:`hessd_server.serving.observability.tracing`), sent where the standard
            ``OTEL_*`` variables say (``hessd-server``) or to the process's tracer
            provider (in-process); off, calls create no span at all.
        tls_cert: PEM certificate chain file of the server; with ``tls_key``
            the server speaks TLS only. ``None``: plaintext.
        tls_key: PEM private key file of ``tls_cert``.
        tls_client_ca: PEM file of the CA(s) that sign client certificates;
            set, every client must present a valid certificate (mTLS).
        auth_token_file: a file of accepted bearer tokens, one per line; set,
            every call but health checks needs ``authorization: Bearer <token>``.
        reflection: serve gRPC server reflection.
        max_compiled_functions: compiled functions kept per model, least
            recently used evicted first (engine setting).
    """

    models: tuple[ModelSpec, ...] = ()
    model_repository: str | None = None
    repository_poll_seconds: float = 10.0
    admin_token_file: str | None = None
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    reuse_port: bool = False
    warmup_batch_sizes: tuple[int, ...] | None = None
    warmup_methods: tuple[str, ...] = DEFAULT_WARMUP_METHODS
    warmup_precisions: tuple[str, ...] = DEFAULT_WARMUP_PRECISIONS
    max_batch_size: int = 1024
    max_result_bytes: int = 1 << 30
    curvature_memory_bytes: int = 256 << 20
    max_curvature_products: int = EngineConfig.max_curvature_products
    jit_compile: bool = True
    strategy: str | None = None
    tuning_cache: str | None = None
    safe_mode: bool = True
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    shared_memory: str = "local"
    max_shared_memory_bytes: int = 1 << 32
    max_shared_memory_regions: int = 1024
    engine_threads: int = 2
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    batching: bool = True
    max_queue_delay_ms: float = 20.0
    max_batches_in_flight: int = 1
    max_queued_requests: int = 256
    max_inline_ms: float = 0.0
    freeze_heap: bool = True
    grace_seconds: float = 30.0
    max_connection_age_seconds: float | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_format: str = "text"
    trace: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token_file: str | None = None
    reflection: bool = True
    max_compiled_functions: int = EngineConfig.max_compiled_functions

    def __post_init__(self) -> None:
        if isinstance(self.listen, str):
            object.__setattr__(self, "listen", (self.listen,))
        if not self.listen or any(not address for address in self.listen):
            raise ValueError(f"listen needs at least one non-empty address, got {self.listen}")
        if len(set(self.listen)) != len(self.listen):
            raise ValueError(f"listen addresses must be unique, got {list(self.listen)}")
        check_warmup_plan(self.warmup_methods, self.warmup_precisions)
        names = [spec.name for spec in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if not 0 < self.chunk_bytes < self.max_message_bytes:
            raise ValueError(
                f"chunk_bytes ({self.chunk_bytes}) must be positive and below "
                f"max_message_bytes ({self.max_message_bytes})"
            )
        if self.strategy is not None and self.strategy not in STRATEGY_NAMES:
            raise ValueError(f"strategy must be one of {list(STRATEGY_NAMES)} or None, got {self.strategy!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {self.log_format!r}")
        if self.shared_memory not in SHARED_MEMORY_ACCESS:
            raise ValueError(
                f"shared_memory must be one of {SHARED_MEMORY_ACCESS}, got {self.shared_memory!r}"
            )
        if self.max_shared_memory_bytes < 1 or self.max_shared_memory_regions < 0:
            raise ValueError(
                "max_shared_memory_bytes must be >= 1 and max_shared_memory_regions >= 0"
            )
        if self.engine_threads < 1:
            raise ValueError(f"engine_threads must be >= 1, got {self.engine_threads}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError(
                f"intra_op_threads and inter_op_threads must be >= 0 (0: one per core), got "
                f"{self.intra_op_threads} and {self.inter_op_threads}"
            )
        if self.repository_poll_seconds < 0:
            raise ValueError(
                f"repository_poll_seconds must be >= 0, got {self.repository_poll_seconds}"
            )
        if self.max_batches_in_flight < 1:
            raise ValueError(f"max_batches_in_flight must be >= 1, got {self.max_batches_in_flight}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.max_inline_ms < 0:
            raise ValueError(f"max_inline_ms must be >= 0, got {self.max_inline_ms}")
        if self.max_queued_requests < 0:
            raise ValueError(f"max_queued_requests must be >= 0, got {self.max_queued_requests}")
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds must be >= 0, got {self.grace_seconds}")
        if self.max_connection_age_seconds is not None and self.max_connection_age_seconds <= 0:
            raise ValueError(
                f"max_connection_age_seconds must be > 0, got {self.max_connection_age_seconds}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        self.engine_config()

    @property
    def served_models(self) -> tuple[ModelSpec, ...]:
        """``models``, or the demo model when neither models nor a repository is configured."""
        if self.models or self.model_repository is not None:
            return self.models
        return (ModelSpec(DEMO_MODEL_NAME, DEMO_MODEL_SOURCE),)

    @property
    def batch_limit(self) -> int:
        """Most examples the batcher puts in one engine call: the largest warmed
        bucket (within ``max_batch_size``), so batches compile nothing new."""
        sizes = self.warmup_batch_sizes or DEFAULT_WARMUP_BATCH_SIZES
        config = self.engine_config()
        return min(config.bucket_for(max(sizes)), config.max_batch_size)

    def engine_config(self) -> EngineConfig:
        """The engine settings every served model is loaded with."""
        return EngineConfig(
            max_batch_size=self.max_batch_size,
            max_result_bytes=self.max_result_bytes,
            curvature_memory_bytes=self.curvature_memory_bytes,
            max_curvature_products=self.max_curvature_products,
            jit_compile=self.jit_compile,
            max_compiled_functions=self.max_compiled_functions,
            strategy=self.strategy,
            tuning_cache=self.tuning_cache,
        )
