"""Fuzzing a real server with hostile messages: hypothesis-built requests of every
method, raw garbage bytes and mutated valid requests, and streams mixing them.

Every answer must be a documented status: never INTERNAL or UNKNOWN, bytes that
do not parse are INVALID_ARGUMENT (MALFORMED_REQUEST), every error carries hessd
details and a short message, no call logs a fault, and the server stays SERVING
and correct. ``HESSD_FUZZ_MESSAGES`` sets how many raw messages are sent (2,000
by default, about 3,000 messages in all with stream items and the hypothesis
calls; raise it for a longer run, e.g. ``HESSD_FUZZ_MESSAGES=50000``).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hessd
import hessd_server as hs
from hessd import errors, status_codes, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1.tensor_pb2 import DataType, Tensor
from support.wire_fixtures import RunningServer, rng_array

MESSAGES = int(os.environ.get("HESSD_FUZZ_MESSAGES", "2000"))
"""Raw and mutated messages sent; a fifth as many calls are built by hypothesis."""
SERVICE = "/hessd.v1.HessianService/"
ANSWERS_TO_REQUESTS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
"""The documented answers to a request that decodes: a result or the caller's mistake."""

MAX_MESSAGE_CHARACTERS = 1100

REQUEST_TYPES: dict[str, type] = {
    "Hessian": pb.HessianRequest,
    "Gradient": pb.GradientRequest,
    "HessianVectorProduct": pb.HessianVectorProductRequest,
    "Evaluate": pb.EvaluateRequest,
    "HessianChunked": pb.HessianRequest,
    "EvaluateChunked": pb.EvaluateRequest,
    "GetModelMetadata": pb.GetModelMetadataRequest,
    "StreamHessian": pb.HessianRequest,
}
SERVER_STREAMING = {"HessianChunked", "EvaluateChunked"}


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as opened:
        yield opened


@pytest.fixture(autouse=True)
def no_faults_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING, logger="hessd_server")
    yield
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not faults, faults[0].getMessage()


def _check(code: grpc.StatusCode, status: Any, allowed: set[grpc.StatusCode]) -> None:
    assert code in allowed, (code, status)
    if code != grpc.StatusCode.OK:
        error = status_codes.from_status(status)
        assert type(error) is not errors.HessdError and error.reason, status
        assert len(error.message) <= MAX_MESSAGE_CHARACTERS


def _call(channel: grpc.Channel, method: str, items: list[bytes]) -> list[tuple[grpc.StatusCode, Any]]:
    """(code, google.rpc.Status or None) of the call, then of each StreamHessian reply."""
    try:
        if method == "StreamHessian":
            call = channel.stream_stream(
                SERVICE + method, response_deserializer=pb.StreamHessianResponse.FromString
            )
            replies = list(call(iter(items), timeout=120))
            assert [reply.index for reply in replies] == list(range(len(items)))
            return [(grpc.StatusCode.OK, None)] + [
                (_code(reply.error.code), reply.error) if reply.HasField("error") else (grpc.StatusCode.OK, None)
                for reply in replies
            ]
        if method in SERVER_STREAMING:
            list(channel.unary_stream(SERVICE + method)(items[0], timeout=120))
        else:
            channel.unary_unary(SERVICE + method)(items[0], timeout=120)
        return [(grpc.StatusCode.OK, None)]
    except grpc.RpcError as error:
        return [(error.code(), rpc_status.from_call(error))]


def _code(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


# Requests built field by field: mostly plausible, often subtly wrong.

DTYPES = [DataType.DATA_TYPE_FLOAT32, DataType.DATA_TYPE_FLOAT64, DataType.DATA_TYPE_FLOAT16, DataType.DATA_TYPE_INT32]
names = st.sampled_from(["demo", "multi", "", "nope"]) | st.text(max_size=300)
keys = st.sampled_from(["x", "a", "b", "ids"]) | st.text(max_size=200)
dimensions = st.integers(0, 12) | st.sampled_from([-1, 2**31, 2**40, 2**63 - 1])


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    dtype = draw(st.sampled_from(DTYPES) | st.integers(-2, 12))
    shape = draw(st.lists(st.integers(0, 12), max_size=4) | st.lists(dimensions, max_size=70))
    itemsize = {1: 4, 2: 8, 3: 2, 5: 4, 6: 8}.get(dtype, 4)
    try:
        exact = int(np.prod(shape, dtype=object)) * itemsize if all(d >= 0 for d in shape) else -1
    except OverflowError:
        exact = -1
    if 0 <= exact <= 4096 and draw(st.booleans()):
        return Tensor(dtype=dtype, shape=shape, data=draw(st.binary(min_size=exact, max_size=exact)))
    return Tensor(dtype=dtype, shape=shape, data=draw(st.binary(max_size=64)))


@st.composite
def requests(draw: st.DrawFn, method: str) -> bytes:
    request_type = REQUEST_TYPES[method]
    fields: dict[str, Any] = {"model_name": draw(names)}
    if draw(st.booleans()):
        fields["model_version"] = draw(st.sampled_from(["", "1", "2"]) | st.text(max_size=100))
    if request_type is not pb.GetModelMetadataRequest:
        fields["x"] = draw(st.dictionaries(keys, tensors(), max_size=3))
        fields["wrt"] = draw(st.sampled_from(["", "x", "a", "b", "ids"]) | st.text(max_size=200))
        if draw(st.booleans()):
            fields["output_weights"] = draw(tensors())
        fields["precision"] = draw(st.sampled_from([0, 1, 3, 4, 99]))
    if request_type is pb.HessianVectorProductRequest:
        fields["v"] = draw(tensors())
    if request_type in (pb.HessianRequest, pb.EvaluateRequest):
        fields["full"] = draw(st.booleans())
    return request_type(**fields).SerializeToString()


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    method = draw(st.sampled_from(sorted(REQUEST_TYPES)))
    count = draw(st.integers(1, 3)) if method == "StreamHessian" else 1
    return method, [draw(requests(method)) for _ in range(count)]


@settings(
    max_examples=max(MESSAGES // 5, 1),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(call=calls())
def test_built_requests_get_documented_answers(channel: grpc.Channel, call: tuple[str, list[bytes]]) -> None:
    method, items = call
    for code, status in _call(channel, method, items):
        _check(code, status, ANSWERS_TO_REQUESTS)


# Raw garbage and mutations of valid requests.

def _valid_requests() -> list[tuple[str, bytes]]:
    x = tensor_codec.encode(rng_array((2, 10)), field="x")
    weights = tensor_codec.encode(np.ones(1, np.float32), field="output_weights")
    hessian = pb.HessianRequest(model_name="demo", x={"x": x}, output_weights=weights).SerializeToString()
    return [
        ("Hessian", hessian),
        ("Gradient", pb.GradientRequest(model_name="demo", x={"x": x}).SerializeToString()),
        ("HessianVectorProduct", pb.HessianVectorProductRequest(model_name="demo", x={"x": x}, v=x).SerializeToString()),
        ("Evaluate", pb.EvaluateRequest(model_name="demo", x={"x": x}, full=True).SerializeToString()),
        ("EvaluateChunked", pb.EvaluateRequest(model_name="demo", x={"x": x}).SerializeToString()),
        ("GetModelMetadata", pb.GetModelMetadataRequest(model_name="multi").SerializeToString()),
        ("StreamHessian", hessian),
    ]


def _garbage(rng: random.Random, valid: bytes) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 64))
    if kind == 1:
        return valid[: rng.randrange(len(valid))]
    if kind == 2:
        position = rng.randrange(len(valid))
        return valid[:position] + bytes([valid[position] ^ (1 << rng.randrange(8))]) + valid[position + 1 :]
    if kind == 3:
        position = rng.randrange(len(valid))
        return valid[:position] + rng.randbytes(rng.randrange(1, 8)) + valid[position:]
    if kind == 4:
        return b"\x0a" + bytes([len(b"\xc3\x28\xff")]) + b"\xc3\x28\xff" + valid
    return valid + rng.randbytes(rng.randrange(1, 16))


def _decodes(method: str, data: bytes) -> bool:
    try:
        REQUEST_TYPES[method].FromString(data)
    except DecodeError:
        return False
    return True


def test_raw_garbage_and_mutations_get_documented_answers(channel: grpc.Channel) -> None:
    rng = random.Random(7)
    valid = _valid_requests()
    malformed = 0
    for _ in range(MESSAGES):
        method, good = rng.choice(valid)
        items = [_garbage(rng, good) for _ in range(3 if method == "StreamHessian" else 1)]
        answers = _call(channel, method, items)
        if method == "StreamHessian":
            answers, items_answers = answers[:1], list(zip(items, answers[1:]))
            _check(*answers[0], {grpc.StatusCode.OK})
        else:
            items_answers = list(zip(items, answers))
        for data, (code, status) in items_answers:
            if _decodes(method, data):
                _check(code, status, ANSWERS_TO_REQUESTS)
            else:
                malformed += 1
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                assert type(status_codes.from_status(status)) is errors.MalformedRequestError
    assert malformed > MESSAGES // 4


def test_the_server_is_serving_and_correct_after_the_fuzzing(server: RunningServer) -> None:
    x = rng_array((2, 10))
    with hessd.Client(server.target, timeout=60) as client:
        assert client.health() == "SERVING"
        assert np.array_equal(client.hessian("demo", x), hs.hessian(server.model("demo"), x))
