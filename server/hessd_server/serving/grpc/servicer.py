"""``hessd.v1.HessianService``: each RPC is one data-plane call between a decode and an encode.

No maths, checks or limits here (they live in :mod:`hessd_server.serving.data_plane`),
and no error handling beyond StreamHessian's (a failed item is answered with its
status; once the server drains, the stream ends UNAVAILABLE, at once if it is
waiting for an item): :mod:`hessd_server.serving.grpc.status_interceptor` turns
exceptions into statuses. Replies that carry Hessians are serialized by
:class:`~hessd_server.serving.grpc.replies.ReplyEncoder` (on a worker thread when
large) and handed to gRPC as bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc.aio
import numpy as np
from google.protobuf.message import Message

from hessd import tensor_codec
from hessd._version import __version__
from hessd.errors import MalformedRequestError
from hessd.results import ModelStatus, TensorInfo
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc

from ..data_plane import Answer, DataPlane, ReplyPlan
from ..data_plane.plane import CurvatureRequest, CurvatureResult
from ..observability import tracing
from ..observability.failure_log import FailureLog
from ..scheduling.admission import Admission
from .replies import ReplyEncoder
from .status_interceptor import status_of

LOOP_ENCODE_BYTES = 1 << 20
"""Results larger than this are encoded on a worker thread, off the event loop."""


class HessianServicer(hessian_service_pb2_grpc.HessianServiceServicer):
    """The gRPC face of ``data_plane``.

    Args:
        data_plane: answers every RPC.
        replies: serializes replies that carry result tensors.
        failures: where failed StreamHessian items are logged.
        admission: tells an open StreamHessian when draining has started.
    """

    def __init__(
        self, data_plane: DataPlane, replies: ReplyEncoder, failures: FailureLog, admission: Admission
    ) -> None:
        self._plane = data_plane
        self._replies = replies
        self._failures = failures
        self._admission = admission

    async def Hessian(self, request: pb.HessianRequest, context: grpc.aio.ServicerContext) -> bytes:
        answer = await self._plane.second_order("Hessian", request, context)
        reply = pb.HessianResponse(model_version=answer.model_version)
        return await self._reply(reply, {"hessian": answer.result.hessian}, answer.reply)

    async def Gradient(self, request: pb.GradientRequest, context: grpc.aio.ServicerContext) -> pb.GradientResponse:
        answer = await self._plane.gradient(request, context)
        gradient = await _encoded(answer.result, "gradient")
        return _checked(pb.GradientResponse(gradient=gradient, model_version=answer.model_version), answer.reply)

    async def HessianVectorProduct(
        self, request: pb.HessianVectorProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianVectorProductResponse:
        answer = await self._plane.hessian_vector_product(request, context)
        hvp = await _encoded(answer.result, "hvp")
        return _checked(pb.HessianVectorProductResponse(hvp=hvp, model_version=answer.model_version), answer.reply)

    async def Evaluate(self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext) -> bytes:
        answer = await self._plane.second_order("Evaluate", request, context)
        reply = pb.EvaluateResponse(model_version=answer.model_version)
        return await self._reply(reply, answer.result._asdict(), answer.reply)

    async def HessianChunked(
        self, request: pb.HessianRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        answer = await self._plane.second_order("HessianChunked", request, context)
        for chunk in await self._chunks({"hessian": answer.result.hessian}, answer):
            yield chunk

    async def EvaluateChunked(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        answer = await self._plane.second_order("EvaluateChunked", request, context)
        for chunk in await self._chunks(answer.result._asdict(), answer):
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
                answer = await self._plane.second_order("StreamHessian", request, context)
                reply: pb.StreamHessianResponse | bytes = await self._reply(
                    pb.StreamHessianResponse(index=index, model_version=answer.model_version),
                    {"hessian": answer.result.hessian},
                    answer.reply,
                )
            except Exception as error:  # this item's failure is its reply; the stream goes on
                self._failures.record("StreamHessian", error)
                reply = pb.StreamHessianResponse(index=index, error=status_of(error))
            yield reply
            index += 1

    async def HessianDiagonal(
        self, request: pb.HessianDiagonalRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianDiagonalResponse:
        return await self._curvature("HessianDiagonal", request, context, pb.HessianDiagonalResponse)

    async def HessianTrace(
        self, request: pb.HessianTraceRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianTraceResponse:
        return await self._curvature("HessianTrace", request, context, pb.HessianTraceResponse)

    async def HessianEigen(
        self, request: pb.HessianEigenRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianEigenResponse:
        return await self._curvature("HessianEigen", request, context, pb.HessianEigenResponse)

    async def HessianSpectrum(
        self, request: pb.HessianSpectrumRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianSpectrumResponse:
        return await self._curvature("HessianSpectrum", request, context, pb.HessianSpectrumResponse)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[model_versions(status) for status in self._plane.model_statuses()],
            server_version=__version__,
        )

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        metadata, label, status = self._plane.metadata(request.model_name, request.model_version)
        return pb.GetModelMetadataResponse(
            name=metadata.name,
            version=label,
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

    async def _curvature(
        self, rpc: str, request: CurvatureRequest, context: grpc.aio.ServicerContext, response: type[Message]
    ) -> Any:
        answer: Answer[CurvatureResult] = await self._plane.curvature(rpc, request, context)
        fields = {name: await _encoded(array, name) for name, array in answer.result._asdict().items()}
        return _checked(response(**fields, model_version=answer.model_version), answer.reply)

    async def _reply(self, reply: Message, results: Mapping[str, np.ndarray], plan: ReplyPlan) -> bytes:
        """``reply`` with ``results`` serialized (or written to shared memory), on a worker
        thread when they are large."""
        with tracing.stage("hessd.encode"):
            if sum(array.nbytes for array in results.values()) > LOOP_ENCODE_BYTES:
                return await asyncio.to_thread(self._replies.reply, reply, results, plan)
            return self._replies.reply(reply, results, plan)

    async def _chunks(self, results: Mapping[str, np.ndarray], answer: Answer[Any]) -> list[bytes]:
        """``results`` as serialized ResultChunks, cut on a worker thread."""
        with tracing.stage("hessd.encode"):
            return await asyncio.to_thread(self._replies.chunks, results, answer.reply.encoding, answer.model_version)


def _checked(reply: Message, plan: ReplyPlan) -> Any:
    """``reply``, once ``plan`` has checked its size."""
    plan.check(reply.ByteSize())
    return reply


async def _encoded(array: np.ndarray, field: str) -> Any:
    """``array`` as a wire tensor, encoded on a worker thread when it is large."""
    with tracing.stage("hessd.encode"):
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
        layout_errors=status.layout_errors,
    )


def _tensor_info(info: TensorInfo) -> pb.TensorInfo:
    return pb.TensorInfo(
        name=info.name,
        shape=[-1 if size is None else size for size in info.shape],
        dtype=info.dtype,
    )
