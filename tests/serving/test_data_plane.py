"""The data plane driven directly, with no gRPC server or channel: request messages
in, results, versions and reply plans out, every refusal a ``hessd`` exception.

The model is y = sum((x A)^2), whose Hessian is 2 A A^T and gradient 2 A A^T x for
every x, so every result has an analytic reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import hessd_server as hs
from support.engine_references import quadratic_model
from hessd import tensor_codec
from hessd.errors import InvalidArgumentError, ModelNotFoundError, ResultTooLargeError
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1.tensor_pb2 import Packing, ResultEncoding
from hessd_server.serving.data_plane import DataPlane
from hessd_server.serving.data_plane.reply_plan import PLAIN_ENCODING, RPCS, ReplyPlan
from hessd_server.serving.data_plane.shared_memory import SharedMemoryRegistry
from hessd_server.serving.observability.metrics import Metrics
from hessd_server.serving.repository.model_registry import ModelRegistry
from hessd_server.serving.scheduling.batching import Batcher, BatchingSettings
from hessd_server.serving.scheduling.engine_executor import EngineExecutor
from hessd_server.serving.scheduling.engine_pool import EngineThreadPool

D, K, B = 6, 3, 4
A = np.random.default_rng(7).normal(size=(D, K))
HESSIAN = 2 * A @ A.T
"""The model's Hessian at every x, (D, D)."""
MAX_MESSAGE_BYTES = 64 * 1024


class Deadline:
    """A call's deadline as scheduling sees it: just the time left."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.asked = 0

    def time_remaining(self) -> float | None:
        self.asked += 1
        return self.seconds


class Plane:
    """A data plane over one registry, batcher and engine pool."""

    def __init__(self, model: hs.Model, pool: EngineThreadPool) -> None:
        self.model = model
        self.input_name = model.metadata().inputs[0].name
        self.registry = ModelRegistry(Metrics())
        self.registry.add_model("quadratic", fixed=True)
        self.registry.set_available("quadratic", 1, self.model)
        self.registry.mark_ready()
        self.batcher = Batcher(
            EngineExecutor(pool, Metrics()),
            Metrics(),
            BatchingSettings(
                enabled=True, engine_threads=1, batch_limit=32, max_queue_delay_s=0.05, max_queued_requests=8
            ),
        )
        self.plane = DataPlane(
            self.registry,
            self.batcher,
            SharedMemoryRegistry(max_region_bytes=1 << 20, max_regions=4),
            max_message_bytes=MAX_MESSAGE_BYTES,
        )

    def x(self, x: np.ndarray) -> dict[str, Any]:
        return {self.input_name: tensor_codec.encode(x, field="x")}


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[hs.Model, EngineThreadPool]]:
    pool = EngineThreadPool(2)
    try:
        yield hs.load_model(quadratic_model(A), name="quadratic"), pool
    finally:
        pool.shutdown(wait=False)


@pytest.fixture
def plane(engine: tuple[hs.Model, EngineThreadPool]) -> Plane:
    """A fresh plane per test, since each test runs its own event loop."""
    return Plane(*engine)


def _x(batch: int = B) -> np.ndarray:
    return np.random.default_rng(batch).normal(size=(batch, D)).astype(np.float32)


def test_a_hessian_is_the_analytic_one_with_its_version_and_plan(plane: Plane) -> None:
    x = _x()
    deadline = Deadline(60.0)
    request = pb.HessianRequest(model_name="quadratic", x=plane.x(x))
    answer = asyncio.run(plane.plane.second_order("Hessian", request, deadline))
    np.testing.assert_allclose(answer.result.hessian, np.broadcast_to(HESSIAN, (B, D, D)), rtol=1e-4, atol=1e-4)
    assert answer.model_version == "1"
    assert answer.reply == ReplyPlan(RPCS["Hessian"], PLAIN_ENCODING, MAX_MESSAGE_BYTES)
    assert deadline.asked >= 1


def test_evaluate_gradient_and_hvp_are_the_analytic_ones(plane: Plane) -> None:
    x = _x()
    gradients = (x.astype(np.float64) @ HESSIAN).astype(np.float32)
    evaluate = pb.EvaluateRequest(model_name="quadratic", x=plane.x(x))
    evaluation = asyncio.run(plane.plane.second_order("Evaluate", evaluate, None)).result
    np.testing.assert_allclose(evaluation.value, 0.5 * np.sum(x * gradients, axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(evaluation.gradient, gradients, rtol=1e-4, atol=1e-4)
    gradient = asyncio.run(plane.plane.gradient(pb.GradientRequest(model_name="quadratic", x=plane.x(x)), None))
    np.testing.assert_allclose(gradient.result, gradients, rtol=1e-4, atol=1e-4)
    v = _x(B + 1)[:B]
    hvp_request = pb.HessianVectorProductRequest(model_name="quadratic", x=plane.x(x), v=tensor_codec.encode(v, field="v"))
    hvp = asyncio.run(plane.plane.hessian_vector_product(hvp_request, None))
    np.testing.assert_allclose(hvp.result, v.astype(np.float64) @ HESSIAN, rtol=1e-4, atol=1e-4)


def test_a_trace_is_the_analytic_one(plane: Plane) -> None:
    request = pb.HessianTraceRequest(model_name="quadratic", x=plane.x(_x()))
    answer = asyncio.run(plane.plane.curvature("HessianTrace", request, None))
    np.testing.assert_allclose(answer.result.trace, np.full(B, np.trace(HESSIAN)), rtol=1e-4)
    assert answer.reply.rpc.name == "HessianTrace"


def test_an_unknown_model_is_not_found(plane: Plane) -> None:
    request = pb.HessianRequest(model_name="nope", x=plane.x(_x()))
    with pytest.raises(ModelNotFoundError):
        asyncio.run(plane.plane.second_order("Hessian", request, None))


def test_a_bad_result_encoding_is_refused_before_the_model_is_looked_up(plane: Plane) -> None:
    request = pb.HessianRequest(model_name="nope", x=plane.x(_x()), result_encoding=ResultEncoding(packing=7))
    with pytest.raises(InvalidArgumentError, match="result_encoding.packing is 7"):
        asyncio.run(plane.plane.second_order("Hessian", request, None))


def test_a_reply_too_large_is_refused_before_any_engine_work(plane: Plane) -> None:
    batch = MAX_MESSAGE_BYTES // (D * D * 4) + 1
    request = pb.HessianRequest(model_name="quadratic", x=plane.x(_x(batch)))
    records = len(plane.batcher.records)
    with pytest.raises(ResultTooLargeError) as raised:
        asyncio.run(plane.plane.second_order("Hessian", request, None))
    assert raised.value.reason == "REPLY_EXCEEDS_MESSAGE_SIZE"
    assert raised.value.metadata["retry_rpc"] == "HessianChunked"
    assert int(raised.value.metadata["reply_bytes"]) > MAX_MESSAGE_BYTES
    assert len(plane.batcher.records) == records


def test_a_packed_hessian_that_fits_only_packed_is_computed(plane: Plane) -> None:
    n = D * D * 4
    batch = MAX_MESSAGE_BYTES // n + 1
    assert batch * (D * (D + 1) // 2) * 4 + 1024 <= MAX_MESSAGE_BYTES
    packed = ResultEncoding(packing=Packing.PACKING_UPPER)
    request = pb.HessianRequest(model_name="quadratic", x=plane.x(_x(batch)), result_encoding=packed)
    answer = asyncio.run(plane.plane.second_order("Hessian", request, None))
    assert answer.result.hessian.shape == (batch, D, D)
    assert answer.reply.encoding.packing == Packing.PACKING_UPPER


def test_the_chunked_rpc_takes_a_result_of_any_size(plane: Plane) -> None:
    batch = MAX_MESSAGE_BYTES // (D * D * 4) + 1
    request = pb.HessianRequest(model_name="quadratic", x=plane.x(_x(batch)))
    answer = asyncio.run(plane.plane.second_order("HessianChunked", request, None))
    np.testing.assert_allclose(answer.result.hessian, np.broadcast_to(HESSIAN, (batch, D, D)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rpc", sorted(RPCS))
def test_the_one_reply_size_check_passes_the_limit_and_refuses_one_byte_more(rpc: str) -> None:
    plan = ReplyPlan(RPCS[rpc], PLAIN_ENCODING, 1000)
    plan.check(1000)
    with pytest.raises(ResultTooLargeError) as raised:
        plan.check(1001)
    assert raised.value.metadata["reply_bytes"] == "1001"
    assert ("retry_rpc" in raised.value.metadata) == (RPCS[rpc].retry_rpc is not None)
