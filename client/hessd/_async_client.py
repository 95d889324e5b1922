"""``hessd.AsyncClient``: the asyncio SDK (grpc.aio)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hessd import _channels, _protocol, curvature_options, reply_bounds
from hessd._channels import Target
from hessd._protocol import ChannelOptions, Inputs, ModelVersion, PemSource, Wrt
from hessd.chunks import Reassembler
from hessd.errors import HessdError
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

_SENT = object()
_END = object()


class AsyncClient:
    """asyncio client of a hessd server; :class:`hessd.Client` with ``async`` methods.

    Same arguments, results (shapes, dtypes, read-only arrays) and exceptions as
    :class:`hessd.Client`. Create it inside a running event loop.

    >>> async with hessd.AsyncClient("127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     (await client.gradient("demo", np.zeros((4, 10), np.float32))).shape
    (4, 10)

    Args:
        target: server address, or several equivalent servers, as for :class:`hessd.Client`.
        timeout: seconds each call may take, retries included (a whole
            ``stream`` counts as one call); ``None`` waits forever.
        credentials: TLS credentials for a secure channel (see :meth:`secure`);
            ``None`` for plaintext.
        token: a bearer token sent with every call as ``authorization: Bearer
            <token>``, for a server run with ``--auth-token-file``.
        options: gRPC channel options; message size limits default to 4 MiB.
        load_balancing: ``"round_robin"``, ``"pick_first"`` or ``None``, as for
            :class:`hessd.Client`.
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
    ) -> None:
        self._metadata = _protocol.call_metadata(token)
        target = _channels.channel_target(target)
        channel_options = _channels.channel_options(target, options, load_balancing)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options)
        self._timeout = timeout
        self._max_receive = _protocol.max_receive_bytes(channel_options)
        self._stub = hessian_service_pb2_grpc.HessianServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._chunked_calls = {
            method: self._channel.unary_stream(
                _protocol.method_path(method), request_serializer=request_type.SerializeToString
            )
            for method, request_type in _protocol.CHUNKED_METHODS.items()
        }

    @classmethod
    def secure(
        cls,
        target: Target,
        *,
        ca: PemSource | None = None,
        cert: PemSource | None = None,
        key: PemSource | None = None,
        **settings: Any,
    ) -> AsyncClient:
        """A client over TLS, with a client certificate for mTLS.

        >>> client = hessd.AsyncClient.secure("hessd.internal:50051", ca="ca.pem",  # doctest: +SKIP
        ...                              cert="client.pem", key="client.key", token="s3cret")

        Args:
            target: as for the constructor; the host name must match the server certificate.
            ca: PEM of the CA(s) to trust (a path, or the PEM bytes); ``None``
                trusts the system's roots.
            cert: PEM certificate chain the client presents (mTLS), with ``key``.
            key: PEM private key of ``cert``.
            settings: further keywords of the constructor (``timeout``, ``token``,
                ``options``).
        """
        return cls(target, credentials=_protocol.tls_credentials(ca, cert, key), **settings)

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
        """Hessian with respect to ``wrt``: float32/float64 (B, *S, *S), or (B, *S, B, *S) if full.

        Arguments as for :meth:`hessd.Client.hessian`.
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
        if _protocol.needs_chunks(request, self._max_receive):
            fields = _protocol.HESSIAN_FIELDS
            arrays, version = await self._chunked("HessianChunked", request, fields, precision)
            return _protocol.versioned(arrays[0], version, with_version)
        reply = await self._call(self._stub.Hessian, request)
        hessian = _protocol.hessian_from(reply, precision)
        return _protocol.versioned(hessian, reply.model_version, with_version)

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
        """Gradient with respect to ``wrt``: float32 or float64 array (B, *S).

        Arguments as for :meth:`hessd.Client.hessian`.
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
        """Hessian-vector product H v for ``v`` of shape (B, *S): float32/float64 (B, *S).

        Arguments as for :meth:`hessd.Client.hvp`.
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
        """Value (B,), gradient (B, *S) and Hessian (as :meth:`hessian`), one dtype.

        Arguments as for :meth:`hessd.Client.hessian`.
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
        if _protocol.needs_chunks(request, self._max_receive):
            fields = _protocol.EVALUATION_FIELDS
            arrays, version = await self._chunked("EvaluateChunked", request, fields, precision)
            return _protocol.versioned(Evaluation(*arrays), version, with_version)
        reply = await self._call(self._stub.Evaluate, request)
        return _protocol.versioned(
            _protocol.evaluation_from(reply, precision), reply.model_version, with_version
        )

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

        As :meth:`hessd.Client.hessian_diagonal`.
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

        As :meth:`hessd.Client.hessian_trace`.
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

        As :meth:`hessd.Client.hessian_eigen`.
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

        As :meth:`hessd.Client.hessian_spectrum`.
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
        xs: Iterable[Inputs] | AsyncIterable[Inputs],
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

        As :meth:`hessd.Client.stream`; ``xs`` may also be an async iterable.

        Yields:
            Per item, a float32 or float64 array (B, *S, *S), or (B, *S, B, *S)
            when ``full`` (a ``hessd.Versioned`` with ``with_version``); or,
            with ``return_errors``, a ``HessdError``.
        """
        order: asyncio.Queue[object] = asyncio.Queue()
        call = self._stub.StreamHessian(timeout=self._timeout, metadata=self._metadata)

        async def send() -> None:
            try:
                async for x in _aiter(xs):
                    try:
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
                    except HessdError as error:
                        order.put_nowait(error)
                        continue
                    order.put_nowait(reply_bounds.bound_of(request))
                    await call.write(request)
                await call.done_writing()
            finally:
                order.put_nowait(_END)

        sender = asyncio.create_task(send())
        try:
            while (entry := await _next_entry(order, call)) is not _END:
                if entry is _SENT or isinstance(entry, reply_bounds.ReplyBound):
                    with _protocol.translated_errors():
                        reply = await call.read()
                    entry = _protocol.stream_item_from(
                        None if reply is grpc.aio.EOF else reply,
                        entry if isinstance(entry, reply_bounds.ReplyBound) else None,
                        precision,
                        with_version,
                    )
                if isinstance(entry, HessdError) and not return_errors:
                    raise entry
                yield entry
            with _protocol.translated_errors():
                await sender
        finally:
            sender.cancel()
            call.cancel()

    async def models(self) -> list[str]:
        """Names of the served models, sorted."""
        reply = await self._call(self._stub.ListModels, pb.ListModelsRequest())
        return _protocol.model_names_from(reply)

    async def model_status(self) -> list[ModelStatus]:
        """Every served model's versions and their states; as :meth:`hessd.Client.model_status`."""
        reply = await self._call(self._stub.ListModels, pb.ListModelsRequest())
        return [_protocol.model_status_from(model) for model in reply.models]

    async def server_version(self) -> str:
        """The hessd release the server runs; as :meth:`hessd.Client.server_version`."""
        reply = await self._call(self._stub.ListModels, pb.ListModelsRequest())
        return reply.server_version

    async def metadata(self, name: str, *, model_version: ModelVersion = None) -> ModelMetadata:
        """Metadata of model ``name``; as :meth:`hessd.Client.metadata`."""
        request = pb.GetModelMetadataRequest(model_name=name, model_version=_protocol.model_version_field(model_version))
        return _protocol.metadata_from(await self._call(self._stub.GetModelMetadata, request))

    async def health(self, service: str = "") -> str:
        """The server's ``grpc.health.v1`` status name, e.g. ``"SERVING"`` or ``"NOT_SERVING"``."""
        request = health_pb2.HealthCheckRequest(service=service)
        reply = await self._call(self._health.Check, request)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable, request: Any) -> Any:
        """``method``'s reply to ``request``, once its results are what ``request`` can get back."""
        with _protocol.translated_errors():
            reply = await method(request, timeout=self._timeout, metadata=self._metadata)
        return reply_bounds.checked(request, reply)

    async def _chunked(
        self, method: str, request: Any, names: tuple[str, ...], precision: str | None
    ) -> tuple[list[np.ndarray], str]:
        """The reassembled result arrays ``names`` in ``precision``, and the model
        version that computed them."""
        reassembler = Reassembler(reply_bounds.bound_of(request))
        with _protocol.translated_errors():
            async for chunk in self._chunked_calls[method](
                request, timeout=self._timeout, metadata=self._metadata
            ):
                reassembler.add_serialized(chunk)
        arrays = _protocol.widened_all(reassembler.arrays(names), precision)
        return arrays, reassembler.model_version


async def _next_entry(order: asyncio.Queue[object], call: grpc.aio.Call) -> object:
    """The next entry of ``order`` (the bound of a sent request's reply, an item's error
    or ``_END``); ``_SENT`` if the call ended while none was coming, so that reading
    its reply raises the call's error instead of waiting forever."""
    while True:
        try:
            return await asyncio.wait_for(order.get(), _protocol.STREAM_POLL_S)
        except asyncio.TimeoutError:
            if call.done():
                return _SENT


async def _aiter(items: Iterable[Inputs] | AsyncIterable[Inputs]) -> AsyncIterator[Inputs]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


__all__ = ["AsyncClient"]
