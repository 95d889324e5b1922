"""Requests a hostile or unlucky caller sends: bytes that are no message, shapes that
cannot be built, endless names. Each gets a clean, documented status over a real
server, nothing is logged as a fault, and the server goes on serving.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd import errors, status_codes, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1.tensor_pb2 import DataType, Tensor
from support.wire_fixtures import SHARED_MODELS, RunningServer, rng_array

X = rng_array((2, 10))
SERVICE = "/hessd.v1.HessianService/"
VALID = pb.HessianRequest(model_name="demo", x={"x": tensor_codec.encode(X, field="x")})
VALID_BYTES = VALID.SerializeToString()

UNDECODABLE: dict[str, bytes] = {
    "one-byte": b"\xff",
    "truncated": VALID_BYTES[:-7],
    "flipped-length": VALID_BYTES[:1] + bytes([VALID_BYTES[1] ^ 0x40]) + VALID_BYTES[2:],
    "invalid-utf8-model-name": b"\x0a\x02\xc3\x28",
    "wire-type-7": b"\x0f",
}

UNARY_METHODS = ["Hessian", "Gradient", "HessianVectorProduct", "Evaluate", "GetModelMetadata"]
SERVER_STREAMING_METHODS = ["HessianChunked", "EvaluateChunked"]


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as opened:
        yield opened


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[hessd.Client]:
    with hessd.Client(server.target, timeout=60) as sdk:
        yield sdk


def _raw_unary(channel: grpc.Channel, method: str, data: bytes) -> bytes:
    return channel.unary_unary(SERVICE + method)(data, timeout=60)


def _raw_server_streaming(channel: grpc.Channel, method: str, data: bytes) -> list[bytes]:
    return list(channel.unary_stream(SERVICE + method)(data, timeout=60))


def _refusal(call: Any) -> errors.HessdError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return status_codes.from_rpc_error(raised.value)


UNARY_CASES = [(method, case) for method in UNARY_METHODS for case in UNDECODABLE] + [
    ("ListModels", "one-byte"),  # an empty message type reads well-formed fields as unknown ones
    ("ListModels", "wire-type-7"),
]


@pytest.mark.parametrize(("method", "case"), UNARY_CASES)
def test_undecodable_bytes_are_invalid_argument_on_every_unary_method(
    channel: grpc.Channel, method: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hessd_server")
    error = _refusal(lambda: _raw_unary(channel, method, UNDECODABLE[case]))
    assert type(error) is errors.MalformedRequestError
    assert error.reason == "MALFORMED_REQUEST"
    assert error.metadata == {"request_bytes": str(len(UNDECODABLE[case]))}
    assert len(error.message) < 400
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.parametrize("method", SERVER_STREAMING_METHODS)
def test_undecodable_bytes_are_invalid_argument_on_chunked_methods(
    channel: grpc.Channel, method: str
) -> None:
    error = _refusal(lambda: _raw_server_streaming(channel, method, UNDECODABLE["truncated"]))
    assert type(error) is errors.MalformedRequestError


def test_a_corrupt_stream_item_gets_its_own_error_and_the_stream_goes_on(
    server: RunningServer, channel: grpc.Channel
) -> None:
    items = [VALID_BYTES, UNDECODABLE["truncated"], b"\xff", VALID_BYTES]
    call = channel.stream_stream(
        SERVICE + "StreamHessian", response_deserializer=pb.StreamHessianResponse.FromString
    )
    replies = list(call(iter(items), timeout=60))
    assert [reply.index for reply in replies] == [0, 1, 2, 3]
    assert [reply.WhichOneof("result") for reply in replies] == ["hessian", "error", "error", "hessian"]
    for reply in replies[1:3]:
        assert type(status_codes.from_status(reply.error)) is errors.MalformedRequestError
        assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    expected = hs.hessian(server.model("demo"), X)
    assert np.array_equal(tensor_codec.decode(replies[3].hessian, field="hessian"), expected)


SHAPES_BEYOND_LIMITS = {
    "huge-beside-zero": ([9223372036854775807, 0], "TENSOR_SHAPE_EXCEEDS_LIMIT"),
    "two-huge-beside-zero": ([0, 2**40, 2**40], "TENSOR_SHAPE_EXCEEDS_LIMIT"),
    "over-message-size-beside-zero": ([0, 2_000_000], "TENSOR_SHAPE_EXCEEDS_LIMIT"),
    "rank-65": ([1] * 65, "TENSOR_RANK_EXCEEDS_LIMIT"),
}


@pytest.mark.parametrize("case", list(SHAPES_BEYOND_LIMITS))
@pytest.mark.parametrize("where", ["x", "v", "output_weights"])
def test_shapes_beyond_the_codec_limits_are_refused_before_numpy(
    channel: grpc.Channel, case: str, where: str
) -> None:
    shape, reason = SHAPES_BEYOND_LIMITS[case]
    data = b"\0" * 4 if case == "rank-65" else b""
    bad = Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=shape, data=data)
    good = tensor_codec.encode(X, field="x")
    request = pb.HessianVectorProductRequest(
        model_name="demo",
        x={"x": bad if where == "x" else good},
        v=bad if where == "v" else good,
        **({"output_weights": bad} if where == "output_weights" else {}),
    )
    stub = channel.unary_unary(
        SERVICE + "HessianVectorProduct", request_serializer=pb.HessianVectorProductRequest.SerializeToString
    )
    error = _refusal(lambda: stub(request, timeout=60))
    assert type(error) is errors.TensorEncodingError and error.reason == reason
    assert error.field == ("x[x]" if where == "x" else where) + ".shape"


LONG = "n" * 100_000
WIDE = "é" * 2_000


@pytest.mark.parametrize(
    ("call", "error_type", "field"),
    [
        (lambda c: c.hessian(LONG, X), errors.ModelNotFoundError, "model_name"),
        (lambda c: c.hessian(WIDE, X), errors.ModelNotFoundError, "model_name"),
        (lambda c: c.metadata(LONG), errors.ModelNotFoundError, "model_name"),
        (lambda c: c.hessian("demo", X, wrt=LONG), errors.UnknownInputError, "wrt"),
        (lambda c: c.gradient("demo", {LONG: X, "o": X}), errors.UnknownInputError, "x[" + "n" * 64 + "…]"),
        (lambda c: c.gradient("demo", {LONG: X[:, :3]}), errors.UnknownInputError, "x[" + "n" * 64 + "…]"),
    ],
    ids=["model-name", "non-ascii-model-name", "metadata", "wrt", "unknown-key", "key-of-bad-input"],
)
def test_endless_names_get_their_own_error_with_a_short_message(
    client: hessd.Client, call: Any, error_type: type[errors.HessdError], field: str
) -> None:
    with pytest.raises(errors.HessdError) as raised:
        call(client)
    assert type(raised.value) is error_type
    assert raised.value.field == field
    assert len(raised.value.message) < 600 and "n" * 65 not in raised.value.message


def test_not_found_names_the_served_models_in_metadata(client: hessd.Client) -> None:
    with pytest.raises(errors.ModelNotFoundError) as raised:
        client.hessian("nope", X)
    assert raised.value.reason == "MODEL_NOT_FOUND"
    assert raised.value.metadata == {"served_models": ",".join(name for name, _ in sorted(SHARED_MODELS))}


def test_byte_count_errors_carry_expected_and_actual_bytes(channel: grpc.Channel) -> None:
    tensor = Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[2, 10], data=b"\0" * 79)
    request = pb.HessianRequest(model_name="demo", x={"x": tensor})
    stub = channel.unary_unary(SERVICE + "Hessian", request_serializer=pb.HessianRequest.SerializeToString)
    error = _refusal(lambda: stub(request, timeout=60))
    assert (error.reason, error.field) == ("TENSOR_BYTE_COUNT_MISMATCH", "x[x].data")
    assert error.metadata == {"expected_bytes": "80", "actual_bytes": "79"}


def test_bad_requests_log_one_line_each_without_tracebacks_at_most_the_window_limit(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hessd_server")
    for _ in range(60):
        _refusal(lambda: _raw_unary(channel, "Gradient", b"\xff"))
    lines = [record for record in caplog.records if record.name == "hessd_server.requests"]
    assert len(lines) <= 2 * 20  # earlier tests of this module may have used the window up
    assert all(record.exc_info is None and "\n" not in record.getMessage() for record in lines)
    assert all("Gradient" in r.getMessage() and "MALFORMED_REQUEST" in r.getMessage() for r in lines)


def test_the_server_still_serves_after_all_that(server: RunningServer, client: hessd.Client) -> None:
    assert client.health() == "SERVING"
    assert np.array_equal(client.hessian("demo", X), hs.hessian(server.model("demo"), X))
