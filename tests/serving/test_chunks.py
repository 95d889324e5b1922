"""Results above the message size limit travel in chunks and come back exact.

The test case of the issue: a per-example Hessian with D = 1200 and B = 2 is
2 * 1200 * 1200 * 4 bytes = 11.5 MB, well above gRPC's default 4 MiB.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd import _protocol, errors, status_codes, tensor_codec
from hessd.chunks import Reassembler
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from support.wire_fixtures import WIDE_INPUT_SIZE, RunningServer, rng_array, serving

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
X = rng_array((2, WIDE_INPUT_SIZE))
HESSIAN_BYTES = 2 * WIDE_INPUT_SIZE * WIDE_INPUT_SIZE * 4


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serving(
        [("wide", "support.wire_fixtures:wide_model")],
        max_message_bytes=MAX_MESSAGE_BYTES,
        chunk_bytes=CHUNK_BYTES,
        max_batch_size=2,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def expected(server: RunningServer) -> hessd.Evaluation:
    return hs.evaluate(server.model("wide"), X)


def test_sdk_reassembles_a_hessian_above_the_message_limit(
    server: RunningServer, expected: hessd.Evaluation
) -> None:
    assert HESSIAN_BYTES > MAX_MESSAGE_BYTES
    with hessd.Client(server.target, timeout=120) as client:
        hessian = client.hessian("wide", X)
    assert hessian.nbytes == HESSIAN_BYTES
    assert hessian.dtype == expected.hessian.dtype and hessian.shape == (2, 1200, 1200)
    assert np.array_equal(hessian, expected.hessian)


def test_sdk_reassembles_a_large_evaluation(
    server: RunningServer, expected: hessd.Evaluation
) -> None:
    with hessd.Client(server.target, timeout=120) as client:
        evaluation = client.evaluate("wide", X)
    for remote, local in zip(evaluation, expected, strict=True):
        assert remote.dtype == local.dtype and np.array_equal(remote, local)


def test_async_sdk_reassembles_too(server: RunningServer, expected: hessd.Evaluation) -> None:
    async def call() -> np.ndarray:
        async with hessd.AsyncClient(server.target, timeout=120) as client:
            return await client.hessian("wide", X)

    assert np.array_equal(asyncio.run(call()), expected.hessian)


def _request() -> pb.HessianRequest:
    return pb.HessianRequest(model_name="wide", x={"x": tensor_codec.encode(X, field="x")})


def test_chunked_rpc_streams_bounded_chunks(
    server: RunningServer, expected: hessd.Evaluation
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        replies = list(
            hessian_service_pb2_grpc.HessianServiceStub(channel).HessianChunked(_request())
        )
    assert len(replies) == math.ceil(HESSIAN_BYTES / CHUNK_BYTES)
    assert all(len(chunk.data) <= CHUNK_BYTES and chunk.name == "hessian" for chunk in replies)
    reassembler = Reassembler()
    for chunk in replies:
        reassembler.add(chunk)
    assert np.array_equal(reassembler.arrays(("hessian",))[0], expected.hessian)


def test_unary_call_above_the_limit_points_at_the_chunked_rpc(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as raised:
        hessian_service_pb2_grpc.HessianServiceStub(channel).Hessian(_request())
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "HessianChunked" in raised.value.details()
    error = status_codes.from_rpc_error(raised.value)
    assert type(error) is errors.ResultTooLargeError
    assert error.reason == "REPLY_EXCEEDS_MESSAGE_SIZE"
    assert error.metadata["retry_rpc"] == "HessianChunked"
    assert error.metadata["max_message_bytes"] == str(MAX_MESSAGE_BYTES)
    assert int(error.metadata["reply_bytes"]) > HESSIAN_BYTES


@pytest.mark.parametrize(
    ("method", "request_type", "retry_rpc"),
    [("Hessian", pb.HessianRequest, "HessianChunked"), ("Evaluate", pb.EvaluateRequest, "EvaluateChunked")],
)
def test_an_oversized_unary_reply_is_refused_before_computing(
    server: RunningServer, method: str, request_type: type, retry_rpc: str
) -> None:
    compiled = server.model("wide").metadata().compile_count
    request = request_type(model_name="wide", x={"x": tensor_codec.encode(X[:1], field="x")})
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as raised:
        getattr(hessian_service_pb2_grpc.HessianServiceStub(channel), method)(request)
    error = status_codes.from_rpc_error(raised.value)
    assert (error.reason, error.metadata["retry_rpc"]) == ("REPLY_EXCEEDS_MESSAGE_SIZE", retry_rpc)
    assert server.model("wide").metadata().compile_count == compiled  # batch 1 was never compiled


def test_server_limit_holds_when_the_client_allows_more(server: RunningServer) -> None:
    generous = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with (
        hessd.Client(server.target, timeout=120, options=generous) as client,
        pytest.raises(errors.ResultTooLargeError, match="HessianChunked"),
    ):
        client.hessian("wide", X)


GENEROUS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
"""Lets the SDK call the unary RPC for a result above the server's message size."""


@pytest.mark.parametrize(
    "encoding",
    [{}, {"packing": "upper"}, {"result_dtype": "float16"}, {"packing": "upper", "result_dtype": "bfloat16"}],
    ids=["plain", "packed", "float16", "packed bfloat16 of a full Hessian"],
)
def test_an_sdk_request_over_the_message_size_is_refused_before_computing(
    server: RunningServer, encoding: dict[str, str]
) -> None:
    """The SDK always sends a result_encoding; its reply size is still judged before computing."""
    full = "bfloat16" in encoding.values()  # packed and rounded, only the full Hessian is too big
    assert HESSIAN_BYTES // 4 < MAX_MESSAGE_BYTES < HESSIAN_BYTES // 2
    batcher = server.server.batcher
    compiled, batches = server.model("wide").metadata().compile_count, len(batcher.records)
    with hessd.Client(server.target, timeout=120, options=GENEROUS) as client:
        with pytest.raises(errors.ResultTooLargeError) as raised:
            client.hessian("wide", X, full=full, **encoding)
        with pytest.raises(errors.ResultTooLargeError, match="EvaluateChunked"):
            client.evaluate("wide", X, full=full, **encoding)
    assert raised.value.reason == "REPLY_EXCEEDS_MESSAGE_SIZE"
    assert raised.value.metadata["retry_rpc"] == "HessianChunked"
    assert (server.model("wide").metadata().compile_count, len(batcher.records)) == (compiled, batches)


def test_an_sdk_request_packed_and_rounded_to_fit_the_message_size_is_computed(
    server: RunningServer, expected: hessd.Evaluation
) -> None:
    with hessd.Client(server.target, timeout=120, options=GENEROUS) as client:
        hessian = client.hessian("wide", X, packing="upper", result_dtype="float16")
    upper = np.triu_indices(WIDE_INPUT_SIZE)
    rounded = expected.hessian.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(hessian[:, upper[0], upper[1]], rounded[:, upper[0], upper[1]])


def test_chunking_is_chosen_from_the_input_shapes() -> None:
    def request(batch: int, **fields: object) -> pb.HessianRequest:
        x = tensor_codec.encode(np.zeros((batch, 1000), np.float32), field="x")
        return pb.HessianRequest(model_name="wide", x={"x": x}, **fields)

    assert not _protocol.needs_chunks(request(1), MAX_MESSAGE_BYTES)  # 4.0 MB fits 4 MiB
    assert _protocol.needs_chunks(request(2), MAX_MESSAGE_BYTES)
    float64 = tensor_codec.encode_precision("float64")
    assert _protocol.needs_chunks(request(1, precision=float64), MAX_MESSAGE_BYTES)
    assert _protocol.needs_chunks(request(1, full=True), MAX_MESSAGE_BYTES // 2)
    assert not _protocol.needs_chunks(request(2), -1)
