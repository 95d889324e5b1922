"""StreamHessian: many requests on one stream, replies in order, bad items answered alone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd import errors, status_codes, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd_server.serving.server_config import ModelSpec, ServerConfig
from support.wire_fixtures import RunningServer, rng_array


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[hessd.Client]:
    with hessd.Client(server.target, timeout=60) as sdk:
        yield sdk


GOOD = [rng_array((batch, 10), seed=batch) for batch in (1, 2, 5, 3)]
BAD_SHAPE = rng_array((2, 7))
BAD_DTYPE = rng_array((2, 10)).astype(np.int32)
NOT_ENCODABLE = rng_array((2, 10)).astype(np.bool_)


def _expected(server: RunningServer, x: np.ndarray, **keywords: Any) -> np.ndarray:
    return hs.hessian(server.model("demo"), x, **keywords)


def test_replies_come_in_request_order(server: RunningServer, client: hessd.Client) -> None:
    results = list(client.stream("demo", iter(GOOD)))
    assert len(results) == len(GOOD)
    for result, x in zip(results, GOOD, strict=True):
        expected = _expected(server, x)
        assert result.dtype == expected.dtype and np.array_equal(result, expected)


def test_keywords_apply_to_every_item(server: RunningServer, client: hessd.Client) -> None:
    results = list(client.stream("demo", GOOD[:2], full=True, precision="float64"))
    for result, x in zip(results, GOOD[:2], strict=True):
        assert np.array_equal(result, _expected(server, x, full=True, precision="float64"))
        assert result.dtype == np.float64


def test_bad_items_get_their_own_errors_and_the_stream_goes_on(
    server: RunningServer, client: hessd.Client
) -> None:
    items = [GOOD[0], BAD_SHAPE, GOOD[1], NOT_ENCODABLE, BAD_DTYPE, GOOD[2]]
    results = list(client.stream("demo", items, return_errors=True))
    assert [type(result).__name__ for result in results] == [
        "ndarray",
        "ShapeError",
        "ndarray",
        "DtypeError",
        "DtypeError",
        "ndarray",
    ]
    for result, x in zip([results[0], results[2], results[5]], GOOD[:3], strict=True):
        assert np.array_equal(result, _expected(server, x))


def test_by_default_a_bad_item_raises_when_reached(client: hessd.Client) -> None:
    results = client.stream("demo", [GOOD[0], GOOD[1], BAD_SHAPE, GOOD[2]])
    assert next(results).shape == (1, 10, 10)
    assert next(results).shape == (2, 10, 10)
    with pytest.raises(errors.ShapeError):
        next(results)


def test_raw_stream_replies_carry_index_and_status(server: RunningServer) -> None:
    def request(x: np.ndarray, model: str = "demo") -> pb.HessianRequest:
        return pb.HessianRequest(model_name=model, x={"x": tensor_codec.encode(x, field="x")})

    requests = [
        request(GOOD[0]),
        request(BAD_SHAPE),
        request(GOOD[1], model="nope"),
        request(GOOD[2]),
    ]
    with grpc.insecure_channel(server.target) as channel:
        replies = list(
            hessian_service_pb2_grpc.HessianServiceStub(channel).StreamHessian(iter(requests))
        )
    assert [reply.index for reply in replies] == [0, 1, 2, 3]
    assert [reply.WhichOneof("result") for reply in replies] == [
        "hessian",
        "error",
        "error",
        "hessian",
    ]
    assert replies[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replies[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert type(status_codes.from_status(replies[1].error)) is errors.ShapeError
    assert type(status_codes.from_status(replies[2].error)) is errors.ModelNotFoundError
    assert np.array_equal(
        tensor_codec.decode(replies[3].hessian, field="hessian"), _expected(server, GOOD[2])
    )


def test_async_stream_in_order_with_errors(server: RunningServer) -> None:
    async def items() -> AsyncIterator[np.ndarray]:
        for x in (GOOD[0], BAD_SHAPE, GOOD[1]):
            yield x

    async def collect() -> list[Any]:
        async with hessd.AsyncClient(server.target, timeout=60) as client:
            return [result async for result in client.stream("demo", items(), return_errors=True)]

    first, bad, second = asyncio.run(collect())
    assert np.array_equal(first, _expected(server, GOOD[0]))
    assert isinstance(bad, errors.ShapeError)
    assert np.array_equal(second, _expected(server, GOOD[1]))


def test_async_stream_raises_at_a_bad_item(server: RunningServer) -> None:
    async def collect() -> list[Any]:
        seen: list[Any] = []
        async with hessd.AsyncClient(server.target, timeout=60) as client:
            async for result in client.stream("demo", [GOOD[0], NOT_ENCODABLE, GOOD[1]]):
                seen.append(result)
        return seen

    with pytest.raises(errors.DtypeError):
        asyncio.run(collect())


def test_empty_stream_yields_nothing(client: hessd.Client) -> None:
    assert list(client.stream("demo", [])) == []


def test_stream_waiting_for_input_ends_with_the_call_deadline(server: RunningServer) -> None:
    release = threading.Event()

    def items() -> Iterator[np.ndarray]:
        release.wait()
        yield GOOD[1]

    try:
        with hessd.Client(server.target, timeout=1.0) as client:
            with pytest.raises(hessd.DeadlineExceededError):
                next(client.stream("demo", items()))
    finally:
        release.set()


def test_an_idle_stream_ends_unavailable_as_soon_as_the_server_drains() -> None:
    """Without it the idle stream would hold the stop for its whole grace (600 s
    here), and ``stop`` would time out; the item before it is answered."""
    more = threading.Event()

    def items() -> Iterator[np.ndarray]:
        yield GOOD[0]
        more.wait(60)
        yield GOOD[0]

    running = RunningServer(ServerConfig(models=(ModelSpec("demo", hs.DEMO_MODEL_SOURCE),), listen="127.0.0.1:0"))
    running.wait_until_serving()
    expected = _expected(running, GOOD[0])
    with hessd.Client(running.target, timeout=60) as sdk:
        results = sdk.stream("demo", items())
        first = next(results)
        assert running.server.admission.in_flight == 1
        running.stop(grace=600)
        with pytest.raises(hessd.UnavailableError, match="shutting down"):
            next(results)
        more.set()
    np.testing.assert_array_equal(first, expected)
