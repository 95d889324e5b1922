"""The SDK against a hostile server: a shared-memory reply placed outside the slot
the client gave, or a proof to be written outside the region, raises a ``hessd``
error and nothing outside the slot is read or written.

The server is a real grpc.aio server on 127.0.0.1 implementing the hessd services,
whose replies each test picks."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import grpc.aio
import numpy as np
import pytest

import hessd
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc, shared_memory_pb2, shared_memory_pb2_grpc
from hessd.v1.tensor_pb2 import DataType, SharedMemoryLocation, Tensor

X = np.ones((2, 10), np.float32)
HESSIAN_SHAPE = (2, 10, 10)
HESSIAN_BYTES = 2 * 10 * 10 * 4
START_TIMEOUT_S = 60.0

Placement = Callable[[SharedMemoryLocation], SharedMemoryLocation]
"""Where the fake server says it put the Hessian, given where it was asked to."""


@dataclass
class _Behaviour:
    placement: Placement = lambda asked: asked
    proof_offset: int = 0
    registered: list[str] = field(default_factory=list)


class _FakeSharedMemory(shared_memory_pb2_grpc.SharedMemoryServiceServicer):
    def __init__(self, behaviour: _Behaviour) -> None:
        self._behaviour = behaviour

    async def RegisterSharedMemory(
        self,
        request: shared_memory_pb2.RegisterSharedMemoryRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[shared_memory_pb2.RegisterSharedMemoryResponse]:
        self._behaviour.registered.append(request.name)
        yield shared_memory_pb2.RegisterSharedMemoryResponse(
            name=request.name,
            size=request.size,
            proof=secrets.token_bytes(32),
            proof_offset=self._behaviour.proof_offset,
        )
        await asyncio.Event().wait()  # open until the client cancels

    async def ConfirmSharedMemory(
        self,
        request: shared_memory_pb2.ConfirmSharedMemoryRequest,
        context: grpc.aio.ServicerContext,
    ) -> shared_memory_pb2.ConfirmSharedMemoryResponse:
        return shared_memory_pb2.ConfirmSharedMemoryResponse()

    async def UnregisterSharedMemory(
        self,
        request: shared_memory_pb2.UnregisterSharedMemoryRequest,
        context: grpc.aio.ServicerContext,
    ) -> shared_memory_pb2.UnregisterSharedMemoryResponse:
        return shared_memory_pb2.UnregisterSharedMemoryResponse()


class _FakeHessians(hessian_service_pb2_grpc.HessianServiceServicer):
    """Answers Hessian with 0, 1, 2, ...: written where it was asked to, with a reply
    that places the result where the behaviour says; or over the wire when asked to."""

    def __init__(self, behaviour: _Behaviour) -> None:
        self._behaviour = behaviour

    async def Hessian(
        self, request: pb.HessianRequest, context: grpc.aio.ServicerContext
    ) -> pb.HessianResponse:
        values = np.arange(np.prod(HESSIAN_SHAPE), dtype="<f4")
        if not request.result_encoding.HasField("shared_memory"):
            wire = Tensor(
                dtype=DataType.DATA_TYPE_FLOAT32, shape=HESSIAN_SHAPE, data=values.tobytes()
            )
            return pb.HessianResponse(hessian=wire, model_version="1")
        asked = request.result_encoding.shared_memory
        descriptor = os.open(f"/dev/shm/{asked.region}", os.O_RDWR)
        try:
            os.pwrite(descriptor, values.tobytes(), asked.offset)
        finally:
            os.close(descriptor)
        said = self._behaviour.placement(asked)
        hessian = Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=HESSIAN_SHAPE)
        hessian.shared_memory.CopyFrom(SharedMemoryLocation(region=said.region, offset=said.offset))
        return pb.HessianResponse(hessian=hessian, model_version="1")


@pytest.fixture()
def fake_server() -> Iterator[tuple[str, _Behaviour]]:
    """A fake hessd server's target and the behaviour its replies follow."""
    behaviour = _Behaviour()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def started() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        shared_memory_pb2_grpc.add_SharedMemoryServiceServicer_to_server(
            _FakeSharedMemory(behaviour), server
        )
        hessian_service_pb2_grpc.add_HessianServiceServicer_to_server(
            _FakeHessians(behaviour), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(started(), loop).result(START_TIMEOUT_S)
    try:
        yield f"127.0.0.1:{port}", behaviour
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_a_reply_in_the_slot_it_was_given_is_read(fake_server: tuple[str, _Behaviour]) -> None:
    target, _ = fake_server
    with hessd.Client(target, shared_memory=True) as client:
        hessian = client.hessian("demo", X)
        expected = np.arange(np.prod(HESSIAN_SHAPE), dtype=np.float32).reshape(HESSIAN_SHAPE)
        same = np.array_equal(hessian, expected)
        del hessian
    assert same


def _moved(region: str | None = None, by: int = 0, to: int | None = None) -> Placement:
    """A placement in ``region`` (default: the one asked), at the offset asked plus
    ``by``, or at ``to``."""

    def placed(asked: SharedMemoryLocation) -> SharedMemoryLocation:
        offset = asked.offset + by if to is None else to
        return SharedMemoryLocation(region=region or asked.region, offset=offset)

    return placed


@pytest.mark.parametrize(
    "placement",
    [
        pytest.param(_moved(by=8), id="overlapping-the-end"),
        pytest.param(_moved(by=HESSIAN_BYTES), id="just-past-the-end"),
        pytest.param(_moved(to=2**64 - 8), id="far-outside"),
        pytest.param(_moved(region="hessd_someone_else"), id="another-region"),
    ],
)
def test_a_reply_placed_outside_its_slot_raises_a_hessd_error(
    fake_server: tuple[str, _Behaviour], placement: Placement
) -> None:
    target, behaviour = fake_server
    behaviour.placement = placement
    with hessd.Client(target, shared_memory=True) as client:
        with pytest.raises(hessd.TensorEncodingError, match="outside the shared memory"):
            client.hessian("demo", X)


def test_a_proof_asked_for_outside_the_region_is_not_written(
    fake_server: tuple[str, _Behaviour],
) -> None:
    target, behaviour = fake_server
    behaviour.proof_offset = 2**40
    with hessd.Client(target, shared_memory=True) as client:
        over_the_wire = client.hessian("demo", X)
        assert isinstance(client._result_memory.refused, hessd.InvalidSharedMemoryError)
    expected = np.arange(np.prod(HESSIAN_SHAPE), dtype=np.float32).reshape(HESSIAN_SHAPE)
    assert np.array_equal(over_the_wire, expected)
    assert behaviour.registered and not any(
        os.path.exists(f"/dev/shm/{name}") for name in behaviour.registered
    )
