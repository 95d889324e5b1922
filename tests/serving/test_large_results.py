"""Large results arrive bit for bit over every path: TCP, unix socket, shared memory,
packed, and rounded to float16 or bfloat16 (exactly as numpy rounds)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd import errors, status_codes, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd.v1.tensor_pb2 import DataType, Packing, ResultChunk, ResultEncoding
from hessd_server.serving.server_config import ModelSpec, ServerConfig
from support.wire_fixtures import HUGE_INPUT_SIZE, WIDE_INPUT_SIZE, RunningServer, rng_array

X = rng_array((2, WIDE_INPUT_SIZE))
CHUNK_BYTES = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    unix_socket = tmp_path_factory.mktemp("sock") / "hessd.sock"
    config = ServerConfig(
        models=(
            ModelSpec("wide", "support.wire_fixtures:wide_model"),
            ModelSpec("huge", "support.wire_fixtures:huge_model"),
        ),
        listen=("127.0.0.1:0", f"unix://{unix_socket}"),
        warmup_batch_sizes=(1, 2),
        max_batch_size=2,
        chunk_bytes=CHUNK_BYTES,
        # pfor's blocks are symmetric only to rounding, which the packing test needs to see;
        # the structural strategy, which autotuning may pick, mirrors them exactly.
        strategy="pfor",
    )
    running = RunningServer(config)
    try:
        running.wait_until_serving()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def expected(server: RunningServer) -> hessd.Evaluation:
    return hs.evaluate(server.model("wide"), X)


def _mirrored_upper(hessian: np.ndarray) -> np.ndarray:
    return np.triu(hessian) + np.transpose(np.triu(hessian, 1), (0, 2, 1))


def _target(server: RunningServer, path: str) -> str:
    """The server's TCP address, or for "unix" and "shared memory" its unix socket."""
    if path == "tcp":
        return server.target
    return next(address for address in server.server.addresses if address.startswith("unix:"))


@pytest.mark.parametrize("packing", ["none", "upper"])
@pytest.mark.parametrize("path", ["tcp", "unix", "shared memory"])
def test_hessian_is_bitwise_the_in_process_one_over_every_path(
    server: RunningServer, expected: hessd.Evaluation, path: str, packing: str
) -> None:
    with hessd.Client(
        _target(server, path), timeout=120, shared_memory=path == "shared memory"
    ) as client:
        hessian = client.hessian("wide", X, packing=packing)
        if path == "shared memory":
            assert server.server.shared_memory.names, "the result did not go through shared memory"
    want = expected.hessian if packing == "none" else _mirrored_upper(expected.hessian)
    assert hessian.dtype == np.float32 and not hessian.flags.writeable
    assert np.array_equal(hessian, want)
    if packing == "none":
        assert not np.array_equal(want, _mirrored_upper(want)), "the test needs an asymmetric H"


@pytest.mark.parametrize("path", ["tcp", "shared memory"])
@pytest.mark.parametrize("result_dtype", ["float16", "bfloat16"])
def test_narrow_results_are_the_rounded_ones_widened_back(
    server: RunningServer, expected: hessd.Evaluation, result_dtype: str, path: str
) -> None:
    narrow = np.float16 if result_dtype == "float16" else ml_dtypes.bfloat16
    with hessd.Client(
        _target(server, path), timeout=120, shared_memory=path == "shared memory"
    ) as client:
        evaluation = client.evaluate("wide", X, result_dtype=result_dtype, packing="upper")
    assert np.array_equal(
        evaluation.hessian, _mirrored_upper(expected.hessian).astype(narrow).astype(np.float32)
    )
    assert np.array_equal(evaluation.gradient, expected.gradient.astype(narrow).astype(np.float32))
    assert all(array.dtype == np.float32 for array in evaluation)


def test_float64_results_stay_float64_when_packed(server: RunningServer) -> None:
    want = hs.hessian(server.model("wide"), X, precision="float64")
    with hessd.Client(server.target, timeout=120) as client:
        hessian = client.hessian("wide", X, precision="float64", packing="upper")
    assert hessian.dtype == np.float64 and np.array_equal(hessian, _mirrored_upper(want))


def test_evaluation_through_shared_memory_is_bitwise(
    server: RunningServer, expected: hessd.Evaluation
) -> None:
    with hessd.Client(_target(server, "unix"), timeout=120, shared_memory=True) as client:
        evaluation = client.evaluate("wide", X)
    for got, want in zip(evaluation, expected, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_async_client_unpacks_and_widens(server: RunningServer, expected: hessd.Evaluation) -> None:
    async def call() -> np.ndarray:
        async with hessd.AsyncClient(server.target, timeout=120) as client:
            return await client.hessian("wide", X, packing="upper", result_dtype="float16")

    want = _mirrored_upper(expected.hessian).astype(np.float16).astype(np.float32)
    assert np.array_equal(asyncio.run(call()), want)


def test_a_64_mb_hessian_arrives_whole_in_chunks(server: RunningServer) -> None:
    x = rng_array((1, HUGE_INPUT_SIZE), seed=3)
    want = hs.hessian(server.model("huge"), x)
    assert want.nbytes > 64 * 10**6
    with hessd.Client(server.target, timeout=300) as client:
        hessian = client.hessian("huge", x)
    assert np.array_equal(hessian, want)


def test_chunks_are_resultchunk_messages_of_bounded_size(
    server: RunningServer, expected: hessd.Evaluation
) -> None:
    request = pb.HessianRequest(
        model_name="wide",
        x={"x": tensor_codec.encode(X, field="x")},
        result_encoding=ResultEncoding(packing=Packing.PACKING_UPPER),
    )
    with grpc.insecure_channel(server.target) as channel:
        chunks = list(hessian_service_pb2_grpc.HessianServiceStub(channel).HessianChunked(request))
    packed_bytes = 2 * WIDE_INPUT_SIZE * (WIDE_INPUT_SIZE + 1) // 2 * 4
    assert sum(len(chunk.data) for chunk in chunks) == packed_bytes
    assert all(len(chunk.data) <= CHUNK_BYTES for chunk in chunks)
    assert {(chunk.packing, tuple(chunk.shape)) for chunk in chunks} == {
        (Packing.PACKING_UPPER, (2, WIDE_INPUT_SIZE, WIDE_INPUT_SIZE))
    }
    assert [chunk.offset for chunk in chunks] == list(range(0, packed_bytes, CHUNK_BYTES))
    assert isinstance(chunks[0], ResultChunk)


@pytest.mark.parametrize(
    ("encoding", "field"),
    [
        (ResultEncoding(packing=7), "result_encoding.packing"),
        (ResultEncoding(dtype=DataType.DATA_TYPE_INT32), "result_encoding.dtype"),
    ],
)
def test_unknown_result_encodings_are_invalid_arguments(
    server: RunningServer, encoding: ResultEncoding, field: str
) -> None:
    request = pb.HessianRequest(
        model_name="wide", x={"x": tensor_codec.encode(X[:1], field="x")}, result_encoding=encoding
    )
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as raised:
        hessian_service_pb2_grpc.HessianServiceStub(channel).Hessian(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()
    error = status_codes.from_rpc_error(raised.value)
    assert (error.reason, error.field) == ("RESULT_ENCODING_INVALID", field)


def test_sdk_refuses_unknown_packing_and_dtypes_before_calling() -> None:
    with hessd.Client("127.0.0.1:1") as client:
        with pytest.raises(errors.InvalidArgumentError, match="packing") as refused:
            client.hessian("wide", X, packing="lower")
        assert refused.value.reason == "RESULT_ENCODING_INVALID"
        with pytest.raises(errors.DtypeError, match="result_dtype"):
            client.hessian("wide", X, result_dtype="int8")
