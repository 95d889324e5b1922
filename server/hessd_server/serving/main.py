"""``hessd-server``: serve models over gRPC until SIGTERM or SIGINT.

Examples::

    hessd-server                                   # the demo model as "demo" on 127.0.0.1:50051
    hessd-server --model mlp=/models/mlp.keras --model cnn=pkg.models:build_cnn \\
        --listen 0.0.0.0:50051 --warmup-batch-sizes 1,8,32 --metrics-port 9090
    hessd-server --listen unix:///run/hessd.sock
    hessd-server --listen unix:///run/hessd/hessd.sock --listen 0.0.0.0:50051
    hessd-server --model-repository /models --admin-token-file /run/secrets/hessd-admin
    hessd-server --model-repository /models --write-tuning-records   # tune, record, exit
    hessd-server --listen 0.0.0.0:50051 --tls-cert server.pem --tls-key server.key \\
        --tls-client-ca clients-ca.pem --auth-token-file tokens.txt

On SIGTERM or SIGINT the server reports NOT_SERVING, refuses new calls,
lets in-flight calls finish (up to ``--grace-seconds``) and exits 0. It
exits 1 when a ``--model`` model cannot be loaded. SIGHUP reloads the model
repository. ``--write-tuning-records`` serves nothing: it writes each served
repository version's tuning records beside it and exits (1 if one failed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from hessd._version import __version__

from ..engine.config import STRATEGY_NAMES, WARMUP_METHODS, WARMUP_PRECISIONS
from .observability.allocator import retain_freed_memory
from .observability.log_format import configure_logging
from .server_config import (
    AUTO_STRATEGY,
    DEFAULT_LISTEN,
    LOG_FORMATS,
    SHARED_MEMORY_ACCESS,
    ModelSpec,
    ServerConfig,
)

_log = logging.getLogger("hessd_server")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags (``sys.argv`` when ``argv`` is None), serve, and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    config = _config_from(parser, args)
    configure_logging(config.log_level, config.log_format)
    if args.write_tuning_records:
        from .repository.tuning_writer import write_tuning_records

        return write_tuning_records(config)
    if not retain_freed_memory():
        _log.info("the C allocator is left as it is; large results may fault their pages in anew")
    return asyncio.run(serve(config))


def parse_config(argv: Sequence[str] | None = None) -> ServerConfig:
    """The ``ServerConfig`` that ``hessd-server`` flags ``argv`` ask for; exits 2 on bad flags."""
    parser = _parser()
    return _config_from(parser, parser.parse_args(argv))


def _config_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ServerConfig:
    """The ``ServerConfig`` of parsed flags ``args``; exits 2 (through ``parser``) on bad ones."""
    try:
        return ServerConfig(
            models=tuple(args.model),
            model_repository=args.model_repository,
            repository_poll_seconds=args.repository_poll_seconds,
            admin_token_file=args.admin_token_file,
            listen=tuple(args.listen) or (DEFAULT_LISTEN,),
            reuse_port=args.reuse_port,
            warmup_batch_sizes=args.warmup_batch_sizes,
            warmup_methods=args.warmup_methods,
            warmup_precisions=args.warmup_precisions,
            max_batch_size=args.max_batch_size,
            max_result_bytes=args.max_result_bytes,
            curvature_memory_bytes=args.curvature_memory_bytes,
            max_curvature_products=args.max_curvature_products,
            jit_compile=args.jit_compile,
            strategy=None if args.strategy == AUTO_STRATEGY else args.strategy,
            tuning_cache=args.tuning_cache,
            safe_mode=args.safe_mode,
            max_message_bytes=args.max_message_bytes,
            chunk_bytes=args.chunk_bytes,
            shared_memory=args.shared_memory,
            max_shared_memory_bytes=args.max_shared_memory_bytes,
            max_shared_memory_regions=args.max_shared_memory_regions,
            engine_threads=args.engine_threads,
            intra_op_threads=args.intra_op_threads,
            inter_op_threads=args.inter_op_threads,
            batching=args.batching,
            max_queue_delay_ms=args.max_queue_delay_ms,
            max_batches_in_flight=args.max_batches_in_flight,
            max_inline_ms=args.max_inline_ms,
            freeze_heap=args.freeze_heap,
            max_queued_requests=args.max_queued_requests,
            grace_seconds=args.grace_seconds,
            max_connection_age_seconds=args.max_connection_age_seconds,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            log_level=args.log_level,
            log_format=args.log_format,
            trace=args.trace,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            auth_token_file=args.auth_token_file,
            reflection=args.reflection,
            max_compiled_functions=args.max_compiled_functions,
        )
    except ValueError as error:
        parser.error(str(error))


async def serve(config: ServerConfig) -> int:
    """Serve ``config`` until SIGTERM or SIGINT; returns the process exit status.

    The server stack (gRPC, TensorFlow) is imported here, after the flags are parsed, so
    that ``--help``, ``--version`` and flag errors never load it
    (``tests/serving/test_cli_startup.py``).
    """
    from .server import create_server

    if config.trace:
        from .observability.tracing import configure_from_environment

        try:
            configure_from_environment()
        except ImportError as error:
            _log.error("--trace needs OpenTelemetry's SDK: pip install 'hessd[otel]' (%s)", error)
            return 1
    if not config.safe_mode:
        _log.warning(
            "--unsafe-deserialization: .keras files may run arbitrary Python code when loaded; "
            "serve only model files you trust"
        )
    try:
        server, _ = create_server(config)
    except ValueError as error:
        _log.error("cannot start: %s", error)
        return 1
    except RuntimeError as error:
        _log.error("%s", error)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.request_reload)
    await server.start()
    _log.info("listening on %s", ", ".join(server.addresses))
    loading = asyncio.ensure_future(server.wait_until_serving())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        _log.error("could not start serving: %s", loading.exception())
        stopping.cancel()
        await server.stop(grace=0)
        return 1
    await stopping
    _log.info("stopping: draining in-flight calls for up to %gs", config.grace_seconds)
    await server.stop(grace=config.grace_seconds)
    loading.cancel()
    _log.info("stopped")
    return 0


def _parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="hessd-server",
        description="Serve Hessians, gradients and Hessian-vector products of models over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        type=_model_spec,
        metavar="NAME=SOURCE",
        help="serve SOURCE (.keras file, SavedModel dir or pkg.module:factory) as NAME, "
        "version 1, never reloaded; repeatable; default (without --model-repository): "
        "the demo model as 'demo'",
    )
    parser.add_argument(
        "--model-repository",
        metavar="DIR",
        help="serve every model folder of DIR (DIR/NAME/VERSION/model.keras or a SavedModel; "
        "optional DIR/NAME/config.toml), reloading it as it changes and on SIGHUP",
    )
    parser.add_argument(
        "--repository-poll-seconds",
        type=float,
        default=defaults.repository_poll_seconds,
        help="how often to scan the model repository for changes; 0: only on SIGHUP "
        "(%(default)s)",
    )
    parser.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="serve hessd.v1.ModelAdmin (LoadModel, UnloadModel, ReloadRepository) to calls "
        "bearing a token of FILE (one per line); off without it",
    )
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="host:port or unix:///path; repeatable, e.g. a unix socket and a TCP port in "
        f"one process (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share TCP ports with other processes already listening on them (SO_REUSEPORT: "
        "the kernel splits new connections between them); without it, a port in use fails "
        "the start",
    )
    parser.add_argument(
        "--warmup-batch-sizes",
        type=_batch_sizes,
        default=defaults.warmup_batch_sizes,
        metavar="B1,B2,...",
        help="batch sizes to compile before SERVING (default: 1,8,32; a request runs in the "
        "smallest warmed bucket that holds it)",
    )
    parser.add_argument(
        "--warmup-methods",
        type=_names,
        default=defaults.warmup_methods,
        metavar="M1,M2,...",
        help=f"methods to compile before SERVING, of {','.join(WARMUP_METHODS)} "
        f"(default: {','.join(defaults.warmup_methods)})",
    )
    parser.add_argument(
        "--warmup-precisions",
        type=_names,
        default=defaults.warmup_precisions,
        metavar="P1,P2",
        help=f"precisions to compile them at, of {','.join(WARMUP_PRECISIONS)} "
        f"(default: {','.join(defaults.warmup_precisions)})",
    )
    for flag, kind, help_text in (
        ("--max-batch-size", int, "largest batch bucket, a power of two"),
        ("--max-result-bytes", int, "refuse results larger than this"),
        ("--curvature-memory-bytes", int, "memory budget of the curvature summaries"),
        (
            "--max-curvature-products",
            int,
            "Hessian-vector products one matrix-free curvature request may take over all its examples",
        ),
        ("--max-message-bytes", int, "largest gRPC message; larger results need chunked RPCs"),
        ("--chunk-bytes", int, "data bytes per result chunk"),
        ("--max-shared-memory-bytes", int, "largest shared-memory region a caller may register"),
        ("--max-shared-memory-regions", int, "most shared-memory regions registered at once"),
        ("--engine-threads", int, "engine calls running at once"),
        ("--intra-op-threads", int, "TensorFlow threads sharing one operation; 0: one per core"),
        ("--inter-op-threads", int, "TensorFlow threads running independent operations; 0: one per core"),
        ("--max-queue-delay-ms", float, "a request queued this long starts on a free or spare engine thread"),
        (
            "--max-batches-in-flight",
            int,
            "batches of one model and batch key running at once; its other requests queue for the next",
        ),
        ("--max-queued-requests", int, "requests that may wait; more fail UNAVAILABLE at once"),
        (
            "--max-inline-ms",
            float,
            "a call finding the server idle, whose kind last took less than this, runs on the event loop "
            "(for one caller at a time); 0: never",
        ),
        ("--grace-seconds", float, "how long in-flight calls may drain on SIGTERM/SIGINT"),
        ("--max-compiled-functions", int, "compiled functions kept per model, LRU evicted"),
    ):
        default = getattr(defaults, flag[2:].replace("-", "_"))
        parser.add_argument(flag, type=kind, default=default, help=f"{help_text} (%(default)s)")
    parser.add_argument(
        "--max-connection-age-seconds",
        type=float,
        default=None,
        help="close client connections gracefully after about this long, so that clients "
        "balancing over a DNS name re-resolve it and find new replicas (default: never)",
    )
    parser.add_argument(
        "--shared-memory",
        choices=SHARED_MEMORY_ACCESS,
        default=defaults.shared_memory,
        help="who may register shared-memory regions for results: off, local (callers on "
        "this host, over loopback or a unix socket) or any (callers whose host shares "
        "/dev/shm with this one, e.g. containers on one machine) (%(default)s)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
    )
    parser.add_argument(
        "--metrics-host", default=defaults.metrics_host, help="address of /metrics (%(default)s)"
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="require client certificates signed by this CA (mTLS); needs --tls-cert",
    )
    parser.add_argument(
        "--auth-token-file",
        metavar="FILE",
        help="require 'authorization: Bearer <token>' with a token of FILE (one per line); "
        "health checks stay open",
    )
    parser.add_argument(
        "--no-reflection", dest="reflection", action="store_false", help="serve no reflection"
    )
    parser.add_argument(
        "--no-batching",
        dest="batching",
        action="store_false",
        help="run every request as its own engine call (the queue bound still holds)",
    )
    parser.add_argument(
        "--no-freeze-heap",
        dest="freeze_heap",
        action="store_false",
        help="leave every object to the garbage collector's full collections, which then walk "
        "TensorFlow's and the models' objects and pause calls",
    )
    parser.add_argument(
        "--no-jit-compile", dest="jit_compile", action="store_false", help="do not use XLA"
    )
    parser.add_argument(
        "--strategy",
        default=AUTO_STRATEGY,
        choices=(AUTO_STRATEGY, *STRATEGY_NAMES),
        help="per-example Hessian strategy: 'auto' (default) takes each bucket's tuning record "
        "(beside the model version, else --tuning-cache), else a fixed rule, so every replica "
        "computes the same bits; naming one pins it",
    )
    parser.add_argument(
        "--tuning-cache",
        metavar="DIR",
        default=defaults.tuning_cache,
        help="directory of tuning records shared by replicas and restarts: a bucket without a "
        "record (here or beside its model version) is tuned by timing and its choice written "
        "here; later processes read it",
    )
    parser.add_argument(
        "--write-tuning-records",
        action="store_true",
        help="do not serve: tune every served version of --model-repository at the warm-up "
        "buckets and write its tuning records beside it (NAME/VERSION/tuning/), which every "
        "later server and library process reads; records already there are kept",
    )
    parser.add_argument(
        "--unsafe-deserialization",
        dest="safe_mode",
        action="store_false",
        help="let .keras files deserialize arbitrary Python (e.g. Lambda layers)",
    )
    parser.add_argument(
        "--log-level", default=defaults.log_level, choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    parser.add_argument(
        "--log-format",
        default=defaults.log_format,
        choices=LOG_FORMATS,
        help="text: lines for people; json: one JSON object per line (time, level, logger, "
        "message, request_id, trace_id, model, version, method, code, reason) (%(default)s)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="give every call OpenTelemetry spans, exported as the standard OTEL_* variables say "
        "(OTEL_TRACES_EXPORTER, default otlp; OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, "
        "OTEL_TRACES_SAMPLER); needs pip install 'hessd[otel]'",
    )
    return parser


def _model_spec(text: str) -> ModelSpec:
    name, separator, source = text.partition("=")
    if not separator or not name or not source:
        raise argparse.ArgumentTypeError(f"expected NAME=SOURCE, got {text!r}")
    return ModelSpec(name, source)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(","))


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(size) for size in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes


if __name__ == "__main__":
    sys.exit(main())
