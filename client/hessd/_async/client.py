"""``hessd.AsyncClient``: the asyncio SDK (grpc.aio)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hessd import _async_flavour as flavour
from hessd import _protocol, _tracing, curvature_options, reply_bounds
from hessd._async.connection import AsyncConnection
from hessd._channels import Target
from hessd._protocol import ChannelOptions, Inputs, ModelVersion, Wrt
from hessd.chunks import Reassembler
from hessd.errors import HessdError, SharedMemoryError
from hessd.results import (
    Diagonal,
    Eigen,
    Evaluation,
    ModelMetadata,
    ModelStatus,
    Spectrum,
    Trace,
    Versioned,
)
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc


class AsyncClient(AsyncConnection):
    """asyncio client of a hessd server, mirroring the ``hessd_server`` library.

    Methods take the library's arguments and return what it returns, with the
    same shapes and dtypes, and raise the same exception types (from
    :mod:`hessd.errors`). B is the batch size and S the per-example shape of the
    differentiated input (``wrt``); with ``wrt`` naming several inputs, S is
    (N,) for their concatenation (see :mod:`hessd.blocks`). Returned arrays are
    read-only views of the received bytes; ``.copy()`` one to write to it. Create it inside a running
    event loop.

    Large results travel fastest through shared memory when the server runs on
    the same host: with ``shared_memory=True``, Hessians and evaluations are
    written by the server into regions this client creates and registers, and
    come back as read-only views of them (a region's slot is reused once its
    arrays are garbage). A server that refuses (another host, or started with
    ``--shared-memory=off``) sends the results over the wire instead.

    >>> async with hessd.AsyncClient("127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     (await client.hessian("demo", np.zeros((4, 10), np.float32))).shape
    (4, 10, 10)

    Args:
        target: server address, e.g. ``"127.0.0.1:50051"`` or ``"unix:///run/hessd.sock"``;
            or several equivalent servers: ``"dns:///hessd.default.svc:50051"``
            (every address the name resolves to), ``"ipv4:10.0.0.1:50051,10.0.0.2:50051"``
            or a list of ``"ip:port"`` strings.
        timeout: seconds each call may take, retries included (a whole
            ``stream`` counts as one call); ``None`` waits forever.
        credentials: TLS credentials for a secure channel (see :meth:`secure`);
            ``None`` for plaintext.
        token: a bearer token sent with every call as ``authorization: Bearer
            <token>``, for a server run with ``--auth-token-file`` (or
            ``--admin-token-file``, for the admin service).
        options: gRPC channel options. The message size limits default to 4 MiB;
            results that may exceed ``grpc.max_receive_message_length`` are
            fetched in chunks and reassembled transparently. A
            ``grpc.service_config`` here replaces the SDK's.
        load_balancing: ``"round_robin"`` or ``"pick_first"``; ``None`` picks
            ``round_robin`` for a target of several servers, ``pick_first`` for one.
            With ``round_robin`` a server that reports ``NOT_SERVING`` (warming
            up, draining) gets no calls. Either way, a call that fails
            ``UNAVAILABLE`` is tried again, up to 5 attempts with backoff.
        shared_memory: have Hessians and evaluations written into shared memory
            when the server is on this host.

    Raises:
        ValueError: a target list that is empty, mixes IPv4 and IPv6 or holds a
            non-IP address; an unknown ``load_balancing``; an empty token, or one
            with surrounding whitespace or a newline.
    """

    def __init__(
        self,
        target: Target,
        *,
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        options: ChannelOptions | None = None,
        load_balancing: str | None = None,
        shared_memory: bool = False,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            credentials=credentials,
            token=token,
            options=options,
            load_balancing=load_balancing,
        )
        self._max_receive = _protocol.max_receive_bytes(self._channel_options)
        self._stub = hessian_service_pb2_grpc.HessianServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._chunked_calls = {
            method: self._channel.unary_stream(
                _protocol.method_path(method), request_serializer=request_type.SerializeToString
            )
            for method, request_type in _protocol.CHUNKED_METHODS.items()
        }
        self._result_memory = (
            flavour.result_memory(
                self._channel, self._target, self._credentials, self._channel_options, self._metadata
            )
            if shared_memory
            else None
        )

    async def hessian(
        self,
        model: str,
        x: Inputs,
        *,
        full: bool = False,
        output_weights: npt.ArrayLike | None = None,
        wrt: Wrt = None,
        precision: str | None = None,
        model_version: ModelVersion = None,
        with_version: bool = False,
        packing: str = "none",
        result_dtype: str | None = None,
    ) -> np.ndarray | Versioned:
        """Hessian of f = sum_b sum_k w_k * model(x)[b, k] with respect to input ``wrt``.

        Args:
            model: name of a served model.
            x: array (B, *S) for a single-input model, or arrays keyed by input name.
            full: False for per-example blocks (B, *S, *S); True for the full
                (B, *S, B, *S) Hessian (needed when examples interact).
            output_weights: w, shape (K,) or (B, K); ``None`` means all ones.
            wrt: the input to differentiate (``None`` for a single-input model), or
                a list of inputs to differentiate together: the Hessian is then
                (B, N, N) over their concatenation, cross blocks included
                (``hessd.split_hessian`` names the blocks).
            precision: ``"float32"`` (also when ``None``) or ``"float64"``.
            model_version: the model version to compute with, e.g. ``2`` or ``"2"``;
                ``None`` for the newest AVAILABLE one.
            with_version: return ``Versioned(result, model_version)``, naming
                the version that computed the result, instead of the result alone.
            packing: ``"upper"`` sends only the upper triangle of each symmetric
                block, about half the bytes, and mirrors it here: the lower
                triangle is then exactly the upper one's transpose. ``"none"``
                sends every element.
            result_dtype: ``"float16"`` or ``"bfloat16"`` rounds the result on
                the server to send half the bytes (a quarter of float64's); it
                comes back widened to ``precision``. ``None`` sends it as computed.

        Returns:
            float32 or float64 array (B, *S, *S), or (B, *S, B, *S) when ``full``;
            with ``with_version``, ``(hessian, model_version)`` as a ``hessd.Versioned``.
        """
        request = _protocol.hessian_request(
            model,
            x,
            full=full,
            output_weights=output_weights,
            wrt=wrt,
            precision=precision,
            model_version=model_version,
            packing=packing,
            result_dtype=result_dtype,
        )
        fields = _protocol.HESSIAN_FIELDS
        shared = None
        if self._result_memory is not None:
            shared = await self._in_shared_memory(self._stub.Hessian, request, fields)
        if shared is not None:
            arrays, version = shared
        elif _protocol.needs_chunks(request, self._max_receive):
            arrays, version = await self._chunked("HessianChunked", request, fields, precision)
        else:
            reply = await self._call(self._stub.Hessian, request)
            arrays, version = [_protocol.hessian_from(reply, precision)], reply.model_version
        return _protocol.versioned(arrays[0], version, with_version)

    async def gradient(
        self,
        model: str,
        x: Inputs,
        *,
        output_weights: npt.ArrayLike | None = None,
        wrt: Wrt = None,
        precision: str | None = None,
        model_version: ModelVersion = None,
        with_version: bool = False,
    ) -> np.ndarray | Versioned:
        """Gradient of f with respect to input ``wrt``: float32 or float64 array (B, *S).

        Arguments as for :meth:`hessian`.
        """
        request = _protocol.gradient_request(
            model,
            x,
            output_weights=output_weights,
            wrt=wrt,
            precision=precision,
            model_version=model_version,
        )
        reply = await self._call(self._stub.Gradient, request)
        return _protocol.versioned(_protocol.gradient_from(reply), reply.model_version, with_version)

    async def hvp(
        self,
        model: str,
        x: Inputs,
        v: npt.ArrayLike,
        *,
        output_weights: npt.ArrayLike | None = None,
        wrt: Wrt = None,
        precision: str | None = None,
        model_version: ModelVersion = None,
        with_version: bool = False,
    ) -> np.ndarray | Versioned:
        """Hessian-vector product (d2f / dx dx) v: float32 or float64 array (B, *S).

        Per example (H_b v_b) for a batch-independent model, the full product otherwise.

        Args:
            v: array (B, *S), shaped like input ``wrt``; for several ``wrt``
                inputs (B, N), or a dict of their blocks (B, *S_i) by name.

        Other arguments as for :meth:`hessian`.
        """
        request = _protocol.hvp_request(
            model,
            x,
            v,
            output_weights=output_weights,
            wrt=wrt,
            precision=precision,
            model_version=model_version,
        )
        reply = await self._call(self._stub.HessianVectorProduct, request)
        return _protocol.versioned(_protocol.hvp_from(reply), reply.model_version, with_version)

    async def evaluate(
        self,
        model: str,
        x: Inputs,
        *,
        full: bool = False,
        output_weights: npt.ArrayLike | None = None,
        wrt: Wrt = None,
        precision: str | None = None,
        model_version: ModelVersion = None,
        with_version: bool = False,
        packing: str = "none",
        result_dtype: str | None = None,
    ) -> Evaluation | Versioned:
        """Value (B,), gradient (B, *S) and Hessian (as :meth:`hessian`) in one call.

        Arguments as for :meth:`hessian` (``packing`` applies to the Hessian);
        the three arrays share one dtype.
        """
        request = _protocol.evaluate_request(
            model,
            x,
            full=full,
            output_weights=output_weights,
            wrt=wrt,
            precision=precision,
            model_version=model_version,
            packing=packing,
            result_dtype=result_dtype,
        )
        fields = _protocol.EVALUATION_FIELDS
        shared = None
        if self._result_memory is not None:
            shared = await self._in_shared_memory(self._stub.Evaluate, request, fields)
        if shared is not None:
            arrays, version = shared
        elif _protocol.needs_chunks(request, self._max_receive):
            arrays, version = await self._chunked("EvaluateChunked", request, fields, precision)
        else:
            reply = await self._call(self._stub.Evaluate, request)
            arrays, version = list(_protocol.evaluation_from(reply, precision)), reply.model_version
        return _protocol.versioned(Evaluation(*arrays), version, with_version)

    async def hessian_diagonal(
        self,
        model: str,
        x: Inputs,
        *,
        method: str = "auto",
        probes: int = curvature_options.DEFAULT_PROBES,
        seed: int | None = None,
        output_weights: npt.ArrayLike | None = None,
        wrt: Wrt = None,
        precision: str | None = None,
        model_version: ModelVersion = None,
        with_version: bool = False,
    ) -> Diagonal | Versioned:
        """Diagonal of each example's Hessian block: ``Diagonal(diagonal, stderr)``, both (B, *S).

        Args:
            method: "exact", "hutchinson" or "auto" (exact when the dense blocks
                fit the server's curvature memory budget).
            probes: Hessian-vector products per example for Hutchinson.
            seed: an integer in [0, 2**64) for reproducible probes; ``None`` for fresh ones.

        Other arguments (``model_version``, ``with_version`` too) as for
        :meth:`hessian`; same as ``hessd_server.hessian_diagonal``.
        """
        request = _protocol.diagonal_request(
            model,
            x,
            method=method,
            probes=probes,
            seed=seed,
            output_weights=output_weights,
            wrt=wrt,
            precision=precision,
            model_version=model_version,
        )
        reply = await self._call(self._stub.HessianDiagonal, request)
        return _protocol.curvature_from(reply, Diagonal, with_version)

    async def hessian_trace(
        self,
        model: str,
        x: Inputs,
        *,
        method: str = "auto",
        probes: int = curvature_options.DEFAULT_PROBES,
        seed: int | None = None,
        output_weights: npt.ArrayLike | None = None,
        wrt: Wrt = None,
        precision: str | None = None,
        model_version: ModelVersion = None,
        with_version: bool = False,
    ) -> Trace | Versioned:
        """Trace (Laplacian) of each example's Hessian block: ``Trace(trace, stderr)``, both (B,).

        Args:
            method: "exact", "hutchinson", "hutch++" (probes >= 3) or "auto".
            probes: Hessian-vector products per example for the estimators.
            seed: an integer in [0, 2**64) for reproducible probes; ``None`` for fresh ones.

        Other arguments (``model_version``, ``with_version`` too) as for
        :meth:`hessian`; same as ``hessd_server.hessian_trace``.
        """
        request = _protocol.trace_request(
            model,
            x,
            method=method,
            probes=probes,
            seed=seed,
            output_weights=output_weights,
            wrt=wrt,
            precision=precision,
            model_version=model_version,
        )
        reply = await self._call(self._stub.HessianTrace, request)
        return _protocol.curvature_from(reply, Trace, with_version)

    async def hessian_eigen(
        self,
        model: str,
        x: Inputs,
        *,
        k: int = 1,
        which: str = "largest",
        method: str = "auto",
        iterations: int | None = None,
        tol: float = curvature_options.DEFAULT_TOL,
        seed: int | None = None,
        output_weights: npt.ArrayLike | None = None,
        wrt: Wrt = None,
        precision: str | None = None,
        model_version: ModelVersion = None,
        with_version: bool = False,
    ) -> Eigen | Versioned:
        """k eigenpairs of each example's Hessian block: ``Eigen(eigenvalues, eigenvectors, residuals)``.

        Shapes (B, k), (B, k, *S) and (B, k); order as ``which`` asks
        ("largest", "smallest", "largest_magnitude").

        Args:
            k: how many eigenpairs, 1 <= k <= D.
            which: "largest", "smallest" or "largest_magnitude".
            method: "exact", "lanczos" or "auto".
            iterations: Lanczos's Krylov dimension (>= k, clipped to D); ``None``: max(64, 4k).
            tol: Lanczos stops once every pair has ‖Hv − λv‖ <= tol·|λ|.
            seed: an integer in [0, 2**64) for a reproducible start; ``None`` for a fresh one.

        Other arguments (``model_version``, ``with_version`` too) as for
        :meth:`hessian`; same as ``hessd_server.hessian_eigen``.
        """
        request = _protocol.eigen_request(
            model,
            x,
            k=k,
            which=which,
            method=method,
            iterations=iterations,
            tol=tol,
            seed=seed,
            output_weights=output_weights,
            wrt=wrt,
            precision=precision,
            model_version=model_version,
        )
        reply = await self._call(self._stub.HessianEigen, request)
        return _protocol.curvature_from(reply, Eigen, with_version)

    async def hessian_spectrum(
        self,
        model: str,
        x: Inputs,
        *,
        probes: int = curvature_options.DEFAULT_SPECTRUM_PROBES,
        iterations: int = curvature_options.DEFAULT_SPECTRUM_ITERATIONS,
        seed: int | None = None,
        output_weights: npt.ArrayLike | None = None,
        wrt: Wrt = None,
        precision: str | None = None,
        model_version: ModelVersion = None,
        with_version: bool = False,
    ) -> Spectrum | Versioned:
        """Stochastic Lanczos quadrature of each example's Hessian spectrum: ``Spectrum(nodes, weights)``.

        Both (B, probes, iterations) (iterations clipped to D); weights >= 0,
        summing to 1 per example.

        Args:
            probes: Lanczos runs (random start vectors) per example.
            iterations: steps per run.
            seed: an integer in [0, 2**64) for reproducible starts; ``None`` for fresh ones.

        Other arguments (``model_version``, ``with_version`` too) as for
        :meth:`hessian`; same as ``hessd_server.hessian_spectrum``.
        """
        request = _protocol.spectrum_request(
            model,
            x,
            probes=probes,
            iterations=iterations,
            seed=seed,
            output_weights=output_weights,
            wrt=wrt,
            precision=precision,
            model_version=model_version,
        )
        reply = await self._call(self._stub.HessianSpectrum, request)
        return _protocol.curvature_from(reply, Spectrum, with_version)

    async def stream(
        self,
        model: str,
        xs: flavour.InputStream,
        *,
        full: bool = False,
        output_weights: npt.ArrayLike | None = None,
        wrt: Wrt = None,
        precision: str | None = None,
        model_version: ModelVersion = None,
        with_version: bool = False,
        packing: str = "none",
        result_dtype: str | None = None,
        return_errors: bool = False,
    ) -> AsyncIterator[np.ndarray | Versioned | HessdError]:
        """Hessians of many batches over one StreamHessian call, yielded in order.

        ``xs`` is consumed lazily, so it may be a generator (for ``AsyncClient`` an async iterable too).
        Each item is an ``x`` as for :meth:`hessian` and gets the same keywords. A bad
        item raises its own exception when iteration reaches it, which ends the stream;
        with ``return_errors=True`` the exception is yielded in the item's place instead
        and the stream goes on. An error of the stream as a whole (e.g. an unreachable
        server) always raises. Results come over the wire, also with
        ``shared_memory=True``.

        Yields:
            Per item, a float32 or float64 array (B, *S, *S), or (B, *S, B, *S)
            when ``full`` (a ``hessd.Versioned`` with ``with_version``); or,
            with ``return_errors``, a ``HessdError``.

        Raises:
            HessdError: a bad item's error (without ``return_errors``), or the
                stream's, e.g. ``UnavailableError``.
        """

        def request_of(x: Inputs) -> pb.HessianRequest:
            return _protocol.hessian_request(
                model,
                x,
                full=full,
                output_weights=output_weights,
                wrt=wrt,
                precision=precision,
                model_version=model_version,
                packing=packing,
                result_dtype=result_dtype,
            )

        with _tracing.traced_call(self._stub.StreamHessian, self._metadata) as metadata:
            entries = flavour.stream_entries(
                self._stub.StreamHessian,
                xs,
                request_of,
                timeout=self._timeout,
                metadata=metadata,
            )
            async for entry in entries:
                if not isinstance(entry, HessdError):
                    reply, bound, request_id = entry
                    entry = _protocol.stream_item_from(reply, bound, precision, with_version, request_id)
                if isinstance(entry, HessdError) and not return_errors:
                    raise entry
                yield entry

    async def models(self) -> list[str]:
        """Names of the served models, sorted."""
        reply = await self._call(self._stub.ListModels, pb.ListModelsRequest())
        return _protocol.model_names_from(reply)

    async def model_status(self) -> list[ModelStatus]:
        """Every served model's versions and their states (LOADING, AVAILABLE, FAILED
        with its error, UNLOADING), sorted by model name."""
        reply = await self._call(self._stub.ListModels, pb.ListModelsRequest())
        return [_protocol.model_status_from(model) for model in reply.models]

    async def server_version(self) -> str:
        """The hessd release the server runs, e.g. ``"0.1.0"`` (compare ``hessd.__version__``);
        ``""`` from a server too old to say."""
        reply = await self._call(self._stub.ListModels, pb.ListModelsRequest())
        return reply.server_version

    async def metadata(self, name: str, *, model_version: ModelVersion = None) -> ModelMetadata:
        """Inputs, outputs, strategy, batch independence, buckets, the version described
        and every version's state, of model ``name`` (at ``model_version``; ``None``:
        the newest AVAILABLE)."""
        request = pb.GetModelMetadataRequest(
            model_name=name, model_version=_protocol.model_version_field(model_version)
        )
        return _protocol.metadata_from(await self._call(self._stub.GetModelMetadata, request))

    async def health(self, service: str = "") -> str:
        """The server's ``grpc.health.v1`` status name, e.g. ``"SERVING"`` or ``"NOT_SERVING"``.

        Args:
            service: ``""`` for the whole server, or ``"hessd.v1.HessianService"``.
        """
        reply = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def close(self) -> None:
        """Close the channel; calls in progress are cancelled, shared-memory regions
        removed (an array still viewing one keeps its memory until it is garbage)."""
        if self._result_memory is not None:
            self._result_memory.close()
        await super().close()

    async def _call(self, method: flavour.UnaryCall, request: Any) -> Any:
        """``method``'s reply to ``request``, once its results are what ``request`` can get back."""
        return reply_bounds.checked(request, await self._unary(method, request))

    async def _chunked(
        self, method: str, request: Any, names: tuple[str, ...], precision: str | None
    ) -> tuple[list[np.ndarray], str]:
        """The reassembled result arrays ``names`` in ``precision``, and the model
        version that computed them."""
        reassembler = Reassembler(reply_bounds.bound_of(request))
        traced = _tracing.traced_call(_protocol.method_path(method), self._metadata)
        with traced as metadata, _protocol.translated_errors():
            async for chunk in self._chunked_calls[method](request, timeout=self._timeout, metadata=metadata):
                reassembler.add_serialized(chunk)
        arrays = _protocol.widened_all(reassembler.arrays(names), precision)
        return arrays, reassembler.model_version

    async def _in_shared_memory(
        self, method: flavour.UnaryCall, request: Any, names: tuple[str, ...]
    ) -> tuple[list[np.ndarray], str] | None:
        """The results of ``request`` written into shared memory, and the model version;
        ``None`` when they are to come over the wire instead (shared memory is off here,
        or the server refused it)."""
        if self._result_memory is None:
            return None
        slot = await self._result_memory.slot(_protocol.shared_memory_bytes(request))
        if slot is None:
            return None
        try:
            request.result_encoding.shared_memory.CopyFrom(slot.location)
            try:
                reply = await self._call(method, request)
            except SharedMemoryError:
                self._result_memory.reset()
                request.result_encoding.ClearField("shared_memory")
                return None
            arrays = slot.arrays([(name, getattr(reply, name)) for name in names])
            precision = _protocol.precision_of(request)
            return _protocol.widened_all(arrays, precision), reply.model_version
        finally:
            slot.done()



__all__ = ["AsyncClient"]
