"""The hessd gRPC server: HessianService, health, reflection and (with an admin
token file) ModelAdmin, over the ``--model`` models and the model repository.

Security is off by default and set in :class:`ServerConfig`: TLS
(``tls_cert``/``tls_key``), client certificates (``tls_client_ca``), bearer
tokens (``auth_token_file``; health stays open for probes) and reflection.

Lifecycle: :func:`create_server` builds and binds; :meth:`HessdServer.start`
starts answering (health NOT_SERVING) and loads and warms every model in the
background; once all are warm, health turns SERVING. The repository is then
reloaded every ``repository_poll_seconds`` and on :meth:`HessdServer.reload_repository`
(SIGHUP, ReloadRepository); health is SERVING while some model has an AVAILABLE
version and every ``--model`` model, and every repository model that has been
AVAILABLE, has one. A repository that yields no servable model (a wrong layout,
every version FAILED) leaves health NOT_SERVING, with the reason in the log and
ListModels, until a reload finds one: the server keeps running and polling, so
that a model copied in later is picked up.
:meth:`HessdServer.stop` turns health NOT_SERVING, refuses new calls with
UNAVAILABLE, lets in-flight calls finish within the grace period, then stops.

>>> async def run(config):                                  # doctest: +SKIP
...     server, port = create_server(config)
...     await server.start()
...     await server.wait_until_serving()
...     await server.stop(grace=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hessd.transfer_options import TRANSFER_OPTIONS
from hessd.v1 import hessian_service_pb2_grpc, model_admin_pb2_grpc, shared_memory_pb2_grpc

from ..engine.runtime import set_thread_pools
from .data_plane import DataPlane
from .data_plane.shared_memory import SharedMemoryRegistry
from .grpc.auth import AcceptedTokens, BearerTokens, ServiceTokens
from .grpc.model_admin import ADMIN_SERVICE_NAME, ModelAdminServicer
from .grpc.replies import ReplyEncoder
from .grpc.servicer import HessianServicer
from .grpc.shared_memory_service import SharedMemoryServicer
from .grpc.status_interceptor import SERVICE_NAME, SHARED_MEMORY_SERVICE_NAME, StatusInterceptor
from .observability.failure_log import FailureLog
from .observability.garbage_collection import HeapFreeze, PauseTimer
from .observability.metrics import Metrics
from .observability.tracing import Tracing
from .repository.model_loader import ModelLoader
from .repository.model_registry import ModelRegistry
from .repository.model_repository import EXPECTED_LAYOUT
from .scheduling.admission import Admission
from .scheduling.batching import Batcher, BatchingSettings
from .scheduling.engine_executor import EngineExecutor
from .scheduling.engine_pool import EngineThreadPool
from .server_config import ServerConfig

_log = logging.getLogger(__name__)

T = TypeVar("T")

UNIX_SCHEMES = ("unix:", "unix-abstract:")
"""How a ``listen`` address that is a unix socket starts: ``unix:///path``, ``unix-abstract:name``."""

DRAIN_QUIET_S = 0.25
"""Once admitted calls have drained, the server waits (within the grace) until no call has
arrived for this long before it closes the transport. Callers that have not yet seen the
health NOT_SERVING keep being refused with UNAVAILABLE, which the SDK retries on another
replica; a call arriving as the transport closes would instead be cut off with CANCELLED."""

REFUSAL_GRACE_S = 1.0
"""Once admitted calls have drained, how long calls still being answered (refusals on their
way out, health watches) get before the transport is closed; within the shutdown grace."""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HessdServer:
    """One hessd server; build it with :func:`create_server`.

    Attributes:
        config: the settings it was built from.
        models: the served models.
        loader: loads, reloads and unloads them.
        metrics: its Prometheus metrics.
        engine_pool: the worker threads engine calls run on: ``engine_threads``,
            and as many spare ones for batches that waited ``max_queue_delay_ms``; daemon
            threads, so the process need not wait for work abandoned when the grace period ends.
        batcher: queues, groups and admits engine work.
        admission: admits calls until draining starts, and counts those in flight.
        addresses: every address it listens on, as bound (a TCP port 0 replaced
            by the chosen port); set by :func:`create_server`.
        shared_memory: the callers' registered shared-memory regions.

    Raises:
        ValueError: the admin token file cannot be read or holds no token.
        RuntimeError: ``intra_op_threads`` or ``inter_op_threads`` ask for other
            sizes than those TensorFlow, already started in this process, has.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        intra_op, inter_op = set_thread_pools(config.intra_op_threads, config.inter_op_threads)
        _log.info("TensorFlow threads: intra-op %d, inter-op %d (0: one per core)", intra_op, inter_op)
        self.metrics = Metrics()
        self._heap = HeapFreeze()
        self._gc_pauses = PauseTimer(self.metrics.observe_gc_pause)
        self.models = ModelRegistry(self.metrics)
        self.loader = ModelLoader(
            self.models,
            self.metrics,
            engine_config=config.engine_config(),
            warmup_batch_sizes=config.warmup_batch_sizes,
            warmup_methods=config.warmup_methods,
            warmup_precisions=config.warmup_precisions,
            safe_mode=config.safe_mode,
            repository=None if config.model_repository is None else Path(config.model_repository),
        )
        self._reload_lock = asyncio.Lock()
        self._polling: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._loaded = False
        self._missing: tuple[list[str], bool] = ([], False)
        self.engine_pool = EngineThreadPool(2 * config.engine_threads)
        self.admission = Admission()
        self.batcher = Batcher(
            EngineExecutor(self.engine_pool, self.metrics),
            self.metrics,
            BatchingSettings(
                enabled=config.batching,
                engine_threads=config.engine_threads,
                batch_limit=config.batch_limit,
                max_queue_delay_s=config.max_queue_delay_ms / 1000,
                max_queued_requests=config.max_queued_requests,
                max_batches_in_flight=config.max_batches_in_flight,
                max_inline_s=config.max_inline_ms / 1000,
            ),
            alone_for=self.admission.alone_for,
        )
        self.shared_memory = SharedMemoryRegistry(
            max_region_bytes=config.max_shared_memory_bytes,
            max_regions=config.max_shared_memory_regions,
        )
        self._shared_memory_service = SharedMemoryServicer(
            self.shared_memory, config.shared_memory
        )
        self._loading: asyncio.Future[None] | None = None
        self._health = health.aio.HealthServicer()
        self.failures = FailureLog(logging.getLogger("hessd_server.requests"))
        """Where failed calls are logged (bad requests and faults, rate-limited)."""
        self.tracing = Tracing() if config.trace else None
        """Gives each call its spans, with ``trace``; ``None`` without."""
        self.grpc_server = grpc.aio.server(
            interceptors=[
                StatusInterceptor(
                    self.metrics, self.admission, self.failures, _service_tokens(config), self.tracing
                )
            ],
            options=[
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", int(config.reuse_port)),
                *_connection_age_options(config),
                *TRANSFER_OPTIONS,
            ],
        )
        hessian_service_pb2_grpc.add_HessianServiceServicer_to_server(
            HessianServicer(
                DataPlane(
                    self.models, self.batcher, self.shared_memory, max_message_bytes=config.max_message_bytes
                ),
                ReplyEncoder(chunk_bytes=config.chunk_bytes, regions=self.shared_memory),
                self.failures,
                self.admission,
            ),
            self.grpc_server,
        )
        shared_memory_pb2_grpc.add_SharedMemoryServiceServicer_to_server(
            self._shared_memory_service, self.grpc_server
        )
        services = [
            SERVICE_NAME,
            SHARED_MEMORY_SERVICE_NAME,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ]
        if config.admin_token_file is not None:
            model_admin_pb2_grpc.add_ModelAdminServicer_to_server(
                ModelAdminServicer(
                    self.loader,
                    self.models,
                    self.administer,
                ),
                self.grpc_server,
            )
            services.append(ADMIN_SERVICE_NAME)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.grpc_server)
        if config.reflection:
            reflection.enable_server_reflection(services, self.grpc_server)
        self.metrics_port: int | None = None
        self.addresses: tuple[str, ...] = ()

    async def start(self) -> None:
        """Start answering calls (health NOT_SERVING) and begin loading and warming models."""
        for service in (health.OVERALL_HEALTH, SERVICE_NAME):
            await self._health.set(service, _NOT_SERVING)
        self._gc_pauses.start()
        await self.grpc_server.start()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve(
                self.config.metrics_host, self.config.metrics_port
            )
            _log.info(
                "metrics on http://%s:%d/metrics", self.config.metrics_host, self.metrics_port
            )
        self._loading = asyncio.ensure_future(self._load())

    async def wait_until_serving(self) -> None:
        """Return once every model is warm and health is SERVING.

        Raises:
            Exception: what stopped a model from loading or warming (e.g.
                ``ModelLoadError``); health then stays NOT_SERVING.
        """
        if self._loading is None:
            raise RuntimeError("start() the server first")
        await asyncio.shield(self._loading)

    async def reload_repository(self, *, explicit: bool = True) -> None:
        """Bring the served versions in step with the model repository now (as SIGHUP does).

        ``explicit=False`` is a poll's reload, which loads a new or changed
        version only once two polls in a row saw the same files.
        """
        await self.administer(functools.partial(self.loader.reload, explicit=explicit))

    def request_reload(self) -> None:
        """Start :meth:`reload_repository` from the event loop without waiting (SIGHUP)."""
        task = asyncio.ensure_future(self.reload_repository())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def administer(self, action: Callable[[], T]) -> T:
        """Run the blocking loader ``action`` off the event loop, one at a time, then
        refreeze the heap if the served versions changed, and update health."""
        async with self._reload_lock:
            revision = self.models.revision
            try:
                return await _in_daemon_thread(action)
            finally:
                if self.models.revision != revision:
                    await self._settle_heap()
                await self._update_health()

    async def stop(self, grace: float | None) -> None:
        """Drain and stop: health NOT_SERVING, new calls (and new stream items) UNAVAILABLE,
        in-flight calls get ``grace`` seconds (``None``: unlimited) to finish, then are
        cancelled. While calls keep arriving, the transport stays open (within ``grace``)
        until none has for :data:`DRAIN_QUIET_S`. Refusals still on their way out then get
        up to :data:`REFUSAL_GRACE_S` of what is left of ``grace`` before the transport
        closes, so that a caller refused at the last moment sees UNAVAILABLE (which the SDK
        retries), not CANCELLED. Shared-memory registrations are refused from the start and
        end once the admitted calls are done (or ``grace`` is over), so that those calls
        still write their results. Engine work still running then is abandoned, not waited
        for: the engine threads are daemons, so the process can exit at once."""
        self._stopping = True
        if self._polling is not None:
            self._polling.cancel()
        self.admission.start_draining()
        self._shared_memory_service.start_draining()
        await self._health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = None if grace is None else loop.time() + grace
        try:
            await asyncio.wait_for(self.admission.drained(), grace)
        except asyncio.TimeoutError:
            _log.warning("grace period of %gs over; cancelling the calls still running", grace)
        self._shared_memory_service.close()
        with contextlib.suppress(asyncio.TimeoutError):
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            await asyncio.wait_for(self.admission.quiet(DRAIN_QUIET_S), remaining)
        left = REFUSAL_GRACE_S if deadline is None else min(REFUSAL_GRACE_S, max(deadline - loop.time(), 0.0))
        await self.grpc_server.stop(left)
        self.engine_pool.shutdown(wait=False, cancel_futures=True)
        self._gc_pauses.stop()
        self._heap.lift()
        self.metrics.close()

    async def _load(self) -> None:
        self.loader.check_repository()
        await _in_daemon_thread(lambda: self.loader.load_fixed(self.config.served_models))
        async with self._reload_lock:
            await _in_daemon_thread(lambda: self.loader.reload(explicit=True))
        await self._settle_heap()
        self.models.mark_ready()
        self._loaded = True
        await self._update_health()
        _log.info("serving models %s", self.models.available_models())
        if self.config.model_repository is not None and self.config.repository_poll_seconds > 0:
            self._polling = asyncio.ensure_future(self._poll())

    async def _settle_heap(self) -> None:
        """With ``freeze_heap``, collect and freeze the objects alive now (off the event loop)."""
        if not self.config.freeze_heap or self._stopping:
            return
        frozen, seconds = await _in_daemon_thread(self._heap.settle)
        _log.info("froze %d long-lived objects out of the garbage collector's way in %.0f ms", frozen, seconds * 1e3)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.repository_poll_seconds)
            try:
                await self.reload_repository(explicit=False)
            except Exception:
                _log.exception("reloading the model repository failed; polling goes on")

    async def _update_health(self) -> None:
        """SERVING while some model is served and none that should be lacks an AVAILABLE
        version."""
        if self._stopping or not self._loaded:
            return
        missing = self.models.missing_models()
        none_served = not self.models.any_available()
        if (missing, none_served) != self._missing:
            self._missing = (missing, none_served)
            if missing:
                _log.warning("health NOT_SERVING: no AVAILABLE version of models %s", missing)
            elif none_served:
                _log.warning(
                    "health NOT_SERVING: the model repository %s yields no servable model; "
                    "a model is laid out as %s (ListModels and the lines above say what was "
                    "found)",
                    self.config.model_repository,
                    EXPECTED_LAYOUT,
                )
            else:
                _log.info("health SERVING")
        status = _NOT_SERVING if missing or none_served else _SERVING
        for service in (health.OVERALL_HEALTH, SERVICE_NAME):
            await self._health.set(service, status)


def create_server(config: ServerConfig) -> tuple[HessdServer, int]:
    """Build a server for ``config`` and bind it to every address of ``config.listen``;
    call in the event loop.

    With ``config.tls_cert`` every TCP address speaks TLS only (and asks for
    client certificates signed by ``config.tls_client_ca`` when that is set);
    unix sockets stay plaintext, guarded by their file permissions (bearer
    tokens apply to them too).

    Returns:
        The server, not yet started, and the port bound for the first TCP address
        of ``config.listen`` (0 when it listens on unix sockets only).
        ``server.addresses`` has every address as bound, ports filled in.

    Raises:
        ValueError: a TLS or token file cannot be read.
        RuntimeError: an address cannot be bound; the message names it.
    """
    credentials = _server_credentials(config)
    server = HessdServer(config)
    bound = [_bind(server.grpc_server, address, credentials) for address in config.listen]
    server.addresses = tuple(address for address, _ in bound)
    return server, next((port for _, port in bound if port), 0)


def _bind(
    grpc_server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> tuple[str, int]:
    """Bind ``address``, with TLS ``credentials`` when given and the address is TCP;
    returns it as bound (a TCP port 0 replaced by the chosen port) and its TCP port
    (0 for a unix socket)."""
    unix = address.startswith(UNIX_SCHEMES)
    try:
        if credentials is None or unix:
            port = grpc_server.add_insecure_port(address)
        else:
            port = grpc_server.add_secure_port(address, credentials)
    except RuntimeError as error:
        hint = "" if unix else (
            " (is another server on that port? stop it, choose another port with --listen, "
            "or pass --reuse-port to share the port on purpose)"
        )
        raise RuntimeError(f"cannot listen on {address}{hint}: {error}") from error
    if unix:
        return address, 0
    host, separator, _ = address.rpartition(":")
    return (f"{host}:{port}" if separator else address), port


def _connection_age_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC's options for ``config.max_connection_age_seconds``; none when it is None."""
    if config.max_connection_age_seconds is None:
        return []
    return [
        ("grpc.max_connection_age_ms", round(config.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", round(config.grace_seconds * 1000)),
    ]


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    client_ca = None if config.tls_client_ca is None else _read(config.tls_client_ca)
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key), _read(config.tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _service_tokens(config: ServerConfig) -> ServiceTokens | None:
    """Caller tokens for HessianService, SharedMemoryService and reflection, admin tokens
    for ModelAdmin; health is never listed, so it stays open."""
    accepted: dict[str, AcceptedTokens] = {}
    if config.auth_token_file is not None:
        callers = AcceptedTokens(BearerTokens.from_file(config.auth_token_file), "--auth-token-file")
        for service in (SERVICE_NAME, SHARED_MEMORY_SERVICE_NAME, reflection.SERVICE_NAME):
            accepted[service] = callers
    if config.admin_token_file is not None:
        admins = BearerTokens.from_file(config.admin_token_file)
        accepted[ADMIN_SERVICE_NAME] = AcceptedTokens(admins, "--admin-token-file")
    return ServiceTokens(accepted) if accepted else None


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path!r}: {error}") from error


async def _in_daemon_thread(function: Callable[[], T]) -> T:
    """``function()`` on a daemon thread, so that a process stopping mid-warmup need not wait."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def target() -> None:
        result, error = None, None
        try:
            result = function()
        except BaseException as raised:
            error = raised
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            _log.debug("model loading finished after the event loop closed")

    threading.Thread(target=target, name="hessd-load", daemon=True).start()
    return await future
