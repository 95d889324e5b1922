"""``hessd.v1.HessianService``: decode the request, call the engine off the loop, encode.

No maths here, and no error handling beyond StreamHessian's (a failed item is
answered with its status): the engine computes and validates, and
:mod:`hessd_server.serving.status_interceptor` turns exceptions into statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc.aio
import numpy as np
from google.protobuf.message import Message

from hessd import chunks, tensor_codec
from hessd.errors import ResultTooLargeError
from hessd.results import Evaluation, TensorInfo
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd.v1.tensor_pb2 import ResultChunk

from .. import engine
from ..engine import Model
from .engine_executor import EngineExecutor
from .model_registry import VERSION, ModelRegistry
from .status_interceptor import status_of

DerivativeRequest = (
    pb.HessianRequest | pb.GradientRequest | pb.HessianVectorProductRequest | pb.EvaluateRequest
)


class HessianServicer(hessian_service_pb2_grpc.HessianServiceServicer):
    """Serves the models of ``models`` through the engine.

    Args:
        models: the served models.
        executor: runs engine calls off the event loop.
        max_message_bytes: replies larger than this fail RESOURCE_EXHAUSTED.
        chunk_bytes: data bytes per ResultChunk.
    """

    def __init__(
        self,
        models: ModelRegistry,
        executor: EngineExecutor,
        *,
        max_message_bytes: int,
        chunk_bytes: int,
    ) -> None:
        self._models = models
        self._executor = executor
        self._max_message_bytes = max_message_bytes
        self._chunk_bytes = chunk_bytes

    async def Hessian(
        self, request: pb.HessianRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianResponse:
        hessian = await self._hessian(request, context)
        reply = pb.HessianResponse(hessian=tensor_codec.encode(hessian, field="hessian"))
        return self._fitting(reply, "call HessianChunked, which streams results of any size")

    async def Gradient(
        self, request: pb.GradientRequest, context: grpc.aio.ServicerContext
    ) -> pb.GradientResponse:
        model, x, options = self._decoded(request)
        gradient = await self._executor.run(context, engine.gradient, model, x, **options)
        reply = pb.GradientResponse(gradient=tensor_codec.encode(gradient, field="gradient"))
        return self._fitting(reply, "send a smaller batch")

    async def HessianVectorProduct(
        self, request: pb.HessianVectorProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianVectorProductResponse:
        model, x, options = self._decoded(request)
        v = tensor_codec.decode(request.v, field="v")
        hvp = await self._executor.run(context, engine.hvp, model, x, v, **options)
        reply = pb.HessianVectorProductResponse(hvp=tensor_codec.encode(hvp, field="hvp"))
        return self._fitting(reply, "send a smaller batch")

    async def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvaluateResponse:
        evaluation = await self._evaluate(request, context)
        reply = pb.EvaluateResponse(
            **{
                name: tensor_codec.encode(array, field=name)
                for name, array in evaluation._asdict().items()
            }
        )
        return self._fitting(reply, "call EvaluateChunked, which streams results of any size")

    async def HessianChunked(
        self, request: pb.HessianRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ResultChunk]:
        hessian = await self._hessian(request, context)
        for chunk in self._chunks("hessian", hessian):
            yield chunk

    async def EvaluateChunked(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ResultChunk]:
        evaluation = await self._evaluate(request, context)
        for name, array in evaluation._asdict().items():
            for chunk in self._chunks(name, array):
                yield chunk

    async def StreamHessian(
        self,
        request_iterator: AsyncIterator[pb.HessianRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamHessianResponse]:
        index = 0
        async for request in request_iterator:
            try:
                hessian = await self._hessian(request, context)
                reply = self._fitting(
                    pb.StreamHessianResponse(
                        index=index, hessian=tensor_codec.encode(hessian, field="hessian")
                    ),
                    "call HessianChunked for this batch",
                )
            except Exception as error:  # this item's failure is its reply; the stream goes on
                reply = pb.StreamHessianResponse(index=index, error=status_of(error))
            yield reply
            index += 1

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[pb.ModelVersions(name=name, versions=[VERSION]) for name in self._models.names]
        )

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        metadata = self._models.get(request.model_name, request.model_version).metadata()
        return pb.GetModelMetadataResponse(
            name=metadata.name,
            version=VERSION,
            inputs=[_tensor_info(info) for info in metadata.inputs],
            outputs=[_tensor_info(info) for info in metadata.outputs],
            strategy=metadata.strategy or "",
            batch_independent=metadata.batch_independent,
            buckets=metadata.buckets,
            compile_count=metadata.compile_count,
            xla_fallbacks=metadata.xla_fallbacks,
        )

    async def _hessian(
        self, request: pb.HessianRequest, context: grpc.aio.ServicerContext
    ) -> np.ndarray:
        model, x, options = self._decoded(request)
        return await self._executor.run(
            context, engine.hessian, model, x, full=request.full, **options
        )

    async def _evaluate(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> Evaluation:
        model, x, options = self._decoded(request)
        return await self._executor.run(
            context, engine.evaluate, model, x, full=request.full, **options
        )

    def _decoded(
        self, request: DerivativeRequest
    ) -> tuple[Model, dict[str, np.ndarray], dict[str, Any]]:
        """The model, ``x`` by input name, and ``output_weights``, ``wrt`` and ``precision``."""
        model = self._models.get(request.model_name, request.model_version)
        x = {name: tensor_codec.decode(tensor, field=name) for name, tensor in request.x.items()}
        output_weights = (
            tensor_codec.decode(request.output_weights, field="output_weights")
            if request.HasField("output_weights")
            else None
        )
        options = {
            "output_weights": output_weights,
            "wrt": request.wrt or None,
            "precision": tensor_codec.decode_precision(request.precision),
        }
        return model, x, options

    def _fitting(self, reply: Message, remedy: str) -> Any:
        """``reply``, unless it exceeds the max message size; then how to get it instead."""
        size = reply.ByteSize()
        if size > self._max_message_bytes:
            raise ResultTooLargeError(
                f"the reply would take {size:,} bytes, over the max message size of "
                f"{self._max_message_bytes:,} bytes; {remedy} (hessd.Client picks the "
                "chunked RPCs by itself)"
            )
        return reply

    def _chunks(self, name: str, array: np.ndarray) -> Iterator[ResultChunk]:
        tensor = tensor_codec.encode(array, field=name)
        return chunks.split(name, tensor, chunk_bytes=self._chunk_bytes)


def _tensor_info(info: TensorInfo) -> pb.TensorInfo:
    return pb.TensorInfo(
        name=info.name,
        shape=[-1 if size is None else size for size in info.shape],
        dtype=info.dtype,
    )
