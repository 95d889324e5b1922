"""``hessd.v1.HessianService``: decode the request, hand it to the batcher, encode.

No maths here, and no error handling beyond StreamHessian's (a failed item is
answered with its status; once the server drains, the stream ends UNAVAILABLE,
at once if it is waiting for an item): the engine computes and validates, and
:mod:`hessd_server.serving.status_interceptor` turns exceptions into statuses.
Replies that carry Hessians are serialized by
:class:`~hessd_server.serving.replies.ReplyEncoder` (on a worker thread when
large) and handed to gRPC as bytes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc.aio
import numpy as np
from google.protobuf.message import Message

from hessd import tensor_codec
from hessd._version import __version__
from hessd.errors import MalformedRequestError, ResultTooLargeError
from hessd.results import Diagonal, Eigen, Evaluation, ModelStatus, Spectrum, TensorInfo, Trace
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd.v1.tensor_pb2 import Packing

from .. import engine
from ..engine import Model
from ..engine.execution import PreparedCall, prepare_gradient, prepare_hvp, prepare_second_order
from ..engine.validation import input_path
from .batching import Batcher
from .admission import Admission
from .failure_log import FailureLog
from .model_registry import ModelRegistry
from .replies import Encoding, ReplyEncoder, encoding_of
from .shared_memory import SharedMemoryRegistry, read_tensor
from .status_interceptor import status_of

CurvatureRequest = (
    pb.HessianDiagonalRequest
    | pb.HessianTraceRequest
    | pb.HessianEigenRequest
    | pb.HessianSpectrumRequest
)
DerivativeRequest = (
    pb.HessianRequest
    | pb.GradientRequest
    | pb.HessianVectorProductRequest
    | pb.EvaluateRequest
    | CurvatureRequest
)
CurvatureResult = Diagonal | Trace | Eigen | Spectrum

CURVATURE_OPTIONS: tuple[str, ...] = (
    "method",
    "probes",
    "seed",
    "k",
    "which",
    "iterations",
    "tol",
)
"""Option fields of the curvature requests; an unset one takes the library's default."""

Preparation = Callable[[Model, dict[str, np.ndarray], dict[str, Any]], PreparedCall]
"""(model, x by input name, options) -> the request checked and ready to run."""

LOOP_ENCODE_BYTES = 1 << 20
"""Results larger than this are encoded on a worker thread, off the event loop."""

ONE_MESSAGE_REPLIES: dict[str, tuple[str, str | None]] = {
    "Hessian": ("hessian", "HessianChunked"),
    "StreamHessian": ("hessian", "HessianChunked"),
    "Evaluate": ("evaluation", "EvaluateChunked"),
    "Gradient": ("gradient", None),
    "HessianVectorProduct": ("gradient", None),
}
"""Per method whose result travels in one message: the result its reply size is
judged by ("hessian", "evaluation" or a (B, *S) "gradient") and the chunked RPC
that streams such results of any size, if there is one."""

PLAIN_ENCODING = Encoding(Packing.PACKING_NONE, None, None)
"""The encoding of a request without ``result_encoding``: results as computed, in the reply."""

REPLY_OVERHEAD_BYTES = 1024
"""Room left in a reply's size estimate for everything but the result bytes."""


class HessianServicer(hessian_service_pb2_grpc.HessianServiceServicer):
    """Serves the models of ``models`` through the engine.

    Args:
        models: the served models.
        batcher: queues, groups and runs engine work off the event loop.
        failures: where failed StreamHessian items are logged.
        admission: tells an open StreamHessian when draining has started.
        max_message_bytes: replies larger than this fail RESOURCE_EXHAUSTED.
        chunk_bytes: data bytes per ResultChunk.
        regions: the registered shared-memory regions, for inputs and results there.
    """

    def __init__(
        self,
        models: ModelRegistry,
        batcher: Batcher,
        failures: FailureLog,
        admission: Admission,
        *,
        max_message_bytes: int,
        chunk_bytes: int,
        regions: SharedMemoryRegistry,
    ) -> None:
        self._models = models
        self._batcher = batcher
        self._failures = failures
        self._admission = admission
        self._max_message_bytes = max_message_bytes
        self._regions = regions
        self._replies = ReplyEncoder(
            max_message_bytes=max_message_bytes, chunk_bytes=chunk_bytes, regions=regions
        )

    async def Hessian(self, request: pb.HessianRequest, context: grpc.aio.ServicerContext) -> bytes:
        encoding = _encoding(request, chunked=False)
        hessian, version = await self._hessian(request, context, "Hessian")
        return await self._reply(
            pb.HessianResponse(model_version=version),
            {"hessian": hessian},
            encoding,
            "call HessianChunked, which streams results of any size",
        )

    async def Gradient(
        self, request: pb.GradientRequest, context: grpc.aio.ServicerContext
    ) -> pb.GradientResponse:
        gradient, version = await self._computed(
            request,
            context,
            "Gradient",
            lambda model, x, options: prepare_gradient(model, x, **options),
        )
        reply = pb.GradientResponse(gradient=await _encoded(gradient, "gradient"), model_version=version)
        return self._fitting(reply, "send a smaller batch")

    async def HessianVectorProduct(
        self, request: pb.HessianVectorProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianVectorProductResponse:
        v = tensor_codec.decode(request.v, field="v", max_bytes=self._max_message_bytes)
        hvp, version = await self._computed(
            request,
            context,
            "HessianVectorProduct",
            lambda model, x, options: prepare_hvp(model, x, v, **options),
        )
        reply = pb.HessianVectorProductResponse(hvp=await _encoded(hvp, "hvp"), model_version=version)
        return self._fitting(reply, "send a smaller batch")

    async def Evaluate(self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext) -> bytes:
        encoding = _encoding(request, chunked=False)
        evaluation, version = await self._evaluate(request, context, "Evaluate")
        return await self._reply(
            pb.EvaluateResponse(model_version=version),
            evaluation._asdict(),
            encoding,
            "call EvaluateChunked, which streams results of any size",
        )

    async def HessianChunked(
        self, request: pb.HessianRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        encoding = _encoding(request, chunked=True)
        hessian, version = await self._hessian(request, context, "HessianChunked")
        for chunk in await self._chunks({"hessian": hessian}, encoding, version):
            yield chunk

    async def EvaluateChunked(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        encoding = _encoding(request, chunked=True)
        evaluation, version = await self._evaluate(request, context, "EvaluateChunked")
        for chunk in await self._chunks(evaluation._asdict(), encoding, version):
            yield chunk

    async def StreamHessian(
        self,
        request_iterator: AsyncIterator[pb.HessianRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamHessianResponse | bytes]:
        index = 0
        async for request in self._admission.until_draining(request_iterator):
            try:
                if isinstance(request, MalformedRequestError):
                    raise request
                encoding = _encoding(request, chunked=False)
                hessian, version = await self._hessian(request, context, "StreamHessian")
                reply: pb.StreamHessianResponse | bytes = await self._reply(
                    pb.StreamHessianResponse(index=index, model_version=version),
                    {"hessian": hessian},
                    encoding,
                    "call HessianChunked for this batch",
                )
            except Exception as error:  # this item's failure is its reply; the stream goes on
                self._failures.record("StreamHessian", error)
                reply = pb.StreamHessianResponse(index=index, error=status_of(error))
            yield reply
            index += 1

    async def HessianDiagonal(
        self, request: pb.HessianDiagonalRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianDiagonalResponse:
        result, version = await self._curvature(request, context, "HessianDiagonal", engine.hessian_diagonal)
        reply = pb.HessianDiagonalResponse(**await _encoded_result(result), model_version=version)
        return self._fitting(reply, "send a smaller batch")

    async def HessianTrace(
        self, request: pb.HessianTraceRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianTraceResponse:
        result, version = await self._curvature(request, context, "HessianTrace", engine.hessian_trace)
        reply = pb.HessianTraceResponse(**await _encoded_result(result), model_version=version)
        return self._fitting(reply, "send a smaller batch")

    async def HessianEigen(
        self, request: pb.HessianEigenRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianEigenResponse:
        result, version = await self._curvature(request, context, "HessianEigen", engine.hessian_eigen)
        reply = pb.HessianEigenResponse(**await _encoded_result(result), model_version=version)
        return self._fitting(reply, "send a smaller batch or ask for fewer k")

    async def HessianSpectrum(
        self, request: pb.HessianSpectrumRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianSpectrumResponse:
        result, version = await self._curvature(request, context, "HessianSpectrum", engine.hessian_spectrum)
        reply = pb.HessianSpectrumResponse(**await _encoded_result(result), model_version=version)
        return self._fitting(reply, "send a smaller batch or fewer probes or iterations")

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[model_versions(status) for status in self._models.statuses()],
            server_version=__version__,
        )

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        with self._models.acquired(request.model_name, request.model_version) as served:
            assert served.model is not None
            metadata = served.model.metadata()
        status = self._models.describe(request.model_name)
        return pb.GetModelMetadataResponse(
            name=metadata.name,
            version=served.label,
            version_status=model_versions(status).version_status,
            inputs=[_tensor_info(info) for info in metadata.inputs],
            outputs=[_tensor_info(info) for info in metadata.outputs],
            strategy=metadata.strategy or "",
            batch_independent=metadata.batch_independent,
            buckets=metadata.buckets,
            compile_count=metadata.compile_count,
            xla_fallbacks=metadata.xla_fallbacks,
            strategy_timings=[
                pb.StrategyTiming(
                    batch=t.batch,
                    precision=t.precision,
                    strategy=t.strategy,
                    outcome=t.outcome,
                    seconds=t.seconds,
                    detail=t.detail,
                    source=t.source,
                )
                for t in metadata.strategy_timings
            ],
        )

    async def _hessian(
        self, request: pb.HessianRequest, context: grpc.aio.ServicerContext, method: str
    ) -> tuple[np.ndarray, str]:
        evaluation, version = await self._second_order(request, context, method, evaluation=False)
        return evaluation.hessian, version

    async def _evaluate(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext, method: str
    ) -> tuple[Evaluation, str]:
        return await self._second_order(request, context, method, evaluation=True)

    async def _second_order(
        self,
        request: pb.HessianRequest | pb.EvaluateRequest,
        context: grpc.aio.ServicerContext,
        method: str,
        *,
        evaluation: bool,
    ) -> tuple[Evaluation, str]:
        def prepare(model: Model, x: dict[str, np.ndarray], options: dict[str, Any]) -> PreparedCall:
            return prepare_second_order(model, x, full=request.full, evaluation=evaluation, **options)

        return await self._computed(request, context, method, prepare)

    async def _curvature(
        self,
        request: CurvatureRequest,
        context: grpc.aio.ServicerContext,
        method: str,
        function: Callable[..., CurvatureResult],
    ) -> tuple[CurvatureResult, str]:
        """``function`` (a curvature summary of the engine) with the options the request
        sets, on the requested model version, and that version. Curvature calls are not
        stacked with others: each runs alone on an engine thread, admitted like any call."""
        chosen = {
            name: getattr(request, name)
            for name in CURVATURE_OPTIONS
            if name in request.DESCRIPTOR.fields_by_name and request.HasField(name)
        }
        with self._models.acquired(request.model_name, request.model_version) as served:
            x, options = self._decoded(request)
            served.check_precision(options["precision"])
            model = served.model
            assert model is not None
            result = await self._batcher.call(
                context, method, lambda: function(model, x, **options, **chosen)
            )
        return result, served.label

    async def _computed(
        self,
        request: DerivativeRequest,
        context: grpc.aio.ServicerContext,
        method: str,
        prepare: Preparation,
    ) -> tuple[Any, str]:
        """The engine's result for ``request`` on the requested model version,
        through the batcher, and that version. The version is held until the
        engine is done with it, so that a reload never unloads it mid-call."""
        with self._models.acquired(request.model_name, request.model_version) as served:
            x, options = self._decoded(request)
            served.check_precision(options["precision"])
            if method in ONE_MESSAGE_REPLIES:
                self._check_reply_size(request, x, *ONE_MESSAGE_REPLIES[method])
            model = served.model
            assert model is not None
            examples = max((array.shape[0] if array.ndim else 1 for array in x.values()), default=1)
            input_bytes = sum(array.nbytes for array in x.values())
            result = await self._batcher.compute(
                context, method, model, lambda: prepare(model, x, options), examples, input_bytes
            )
        return result, served.label

    def _decoded(self, request: DerivativeRequest) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``x`` by input name, and ``output_weights``, ``wrt`` and ``precision``."""
        limit = self._max_message_bytes
        x = {
            name: read_tensor(self._regions, tensor, field=input_path(name), max_bytes=limit)
            for name, tensor in request.x.items()
        }
        output_weights = (
            tensor_codec.decode(request.output_weights, field="output_weights", max_bytes=limit)
            if request.HasField("output_weights")
            else None
        )
        options = {
            "output_weights": output_weights,
            "wrt": request.wrt or None,
            "precision": tensor_codec.decode_precision(request.precision),
        }
        return x, options

    def _check_reply_size(
        self, request: DerivativeRequest, x: dict[str, np.ndarray], result: str, retry_rpc: str | None
    ) -> None:
        """Refuse, before computing, a ``result`` ("hessian", "evaluation" or
        "gradient") whose reply cannot fit one message.

        The size follows from the differentiated input's shape (B, *S), ``full``
        and ``precision``; a request whose inputs the engine would refuse anyway
        is left to it, and so is one that asks for a ``result_encoding`` (packed,
        rounded or in shared memory), whose reply is measured once encoded.
        """
        if "result_encoding" in request.DESCRIPTOR.fields_by_name and request.HasField(
            "result_encoding"
        ):
            return
        wrt = request.wrt if request.wrt in x else next(iter(x)) if len(x) == 1 else None
        if wrt is None or x[wrt].ndim < 1:
            return
        batch, size = x[wrt].shape[0], math.prod(x[wrt].shape[1:])
        elements = batch * size
        if result != "gradient":
            elements = elements * elements if getattr(request, "full", False) else elements * size
        if result == "evaluation":
            elements += batch + batch * size
        itemsize = 8 if tensor_codec.decode_precision(request.precision) == "float64" else 4
        reply_bytes = elements * itemsize + REPLY_OVERHEAD_BYTES
        if reply_bytes <= self._max_message_bytes:
            return
        remedy = (
            f"call {retry_rpc}, which streams results of any size (hessd.Client picks the "
            "chunked RPCs by itself)"
            if retry_rpc
            else "send a smaller batch"
        )
        raise ResultTooLargeError(
            f"the reply would take about {reply_bytes:,} bytes, over the max message size of "
            f"{self._max_message_bytes:,} bytes; {remedy}",
            reason="REPLY_EXCEEDS_MESSAGE_SIZE",
            metadata={
                "reply_bytes": reply_bytes,
                "max_message_bytes": self._max_message_bytes,
                **({"retry_rpc": retry_rpc} if retry_rpc else {}),
            },
        )

    def _fitting(self, reply: Message, remedy: str) -> Any:
        """``reply``, unless it exceeds the max message size; then how to get it instead."""
        size = reply.ByteSize()
        if size > self._max_message_bytes:
            raise ResultTooLargeError(
                f"the reply would take {size:,} bytes, over the max message size of "
                f"{self._max_message_bytes:,} bytes; {remedy} (hessd.Client picks the "
                "chunked RPCs by itself)",
                reason="REPLY_EXCEEDS_MESSAGE_SIZE",
                metadata={"reply_bytes": size, "max_message_bytes": self._max_message_bytes},
            )
        return reply

    async def _reply(
        self, reply: Message, results: Mapping[str, np.ndarray], encoding: Encoding, remedy: str
    ) -> bytes:
        """``reply`` with ``results`` serialized (or written to shared memory), on a worker
        thread when they are large."""
        if sum(array.nbytes for array in results.values()) > LOOP_ENCODE_BYTES:
            return await asyncio.to_thread(
                self._replies.reply, reply, results, encoding, remedy=remedy
            )
        return self._replies.reply(reply, results, encoding, remedy=remedy)

    async def _chunks(
        self, results: Mapping[str, np.ndarray], encoding: Encoding, version: str
    ) -> list[bytes]:
        """``results`` as serialized ResultChunks, cut on a worker thread."""
        return await asyncio.to_thread(self._replies.chunks, results, encoding, version)


async def _encoded(array: np.ndarray, field: str) -> Any:
    """``array`` as a wire tensor, encoded on a worker thread when it is large."""
    if array.nbytes > LOOP_ENCODE_BYTES:
        return await asyncio.to_thread(tensor_codec.encode, array, field=field)
    return tensor_codec.encode(array, field=field)


def model_versions(status: ModelStatus) -> pb.ModelVersions:
    """``status`` as the wire's ``ModelVersions``."""
    return pb.ModelVersions(
        name=status.name,
        versions=status.available,
        version_status=[
            pb.ModelVersionStatus(
                version=v.version,
                state=pb.ModelState.Value(f"MODEL_STATE_{v.state}"),
                error=v.error or "",
            )
            for v in status.versions
        ],
        error=status.error or "",
    )


def _encoding(request: pb.HessianRequest | pb.EvaluateRequest, *, chunked: bool) -> Encoding:
    if not request.HasField("result_encoding"):
        return PLAIN_ENCODING
    return encoding_of(request.result_encoding, request.precision, chunked=chunked)


async def _encoded_result(result: CurvatureResult) -> dict[str, Any]:
    """A curvature result's arrays as reply fields of the same names."""
    return {name: await _encoded(array, name) for name, array in result._asdict().items()}


def _tensor_info(info: TensorInfo) -> pb.TensorInfo:
    return pb.TensorInfo(
        name=info.name,
        shape=[-1 if size is None else size for size in info.shape],
        dtype=info.dtype,
    )
