"""The SDK against a hostile server: a real gRPC server on 127.0.0.1:0 answers with
crafted replies (a huge declared shape, a wrong dtype, packing or batch size, extra
or missing results, chunks out of range), and both clients raise a hessd error
without allocating anything near what the reply declares. Honest replies of the
same requests decode, so the bounds are not stricter than the server's contract.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

import hessd
from hessd import tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from hessd.v1.tensor_pb2 import DataType, Packing, ResultChunk, Tensor

B, D = 2, 3
X = np.arange(B * D, dtype=np.float32).reshape(B, D)
HESSIAN = np.ones((B, D, D), np.float32)
SMALL_ALLOCATION_BYTES = 64 << 20
"""More than any reply here honestly needs, far less than any declared size under test."""
TINY_RECEIVE = [("grpc.max_receive_message_length", 1024)]
"""Makes the SDK fetch every Hessian and evaluation in chunks."""
FLAVOURS = ("sync", "async")


class CannedServicer(hessian_service_pb2_grpc.HessianServiceServicer):
    """Answers each method with the reply (or, for streaming methods, the replies) a test set."""

    def __init__(self) -> None:
        self.replies: dict[str, Any] = {}

    def Hessian(self, request: pb.HessianRequest, context: grpc.ServicerContext) -> Any:
        return self.replies["Hessian"]

    def Evaluate(self, request: pb.EvaluateRequest, context: grpc.ServicerContext) -> Any:
        return self.replies["Evaluate"]

    def Gradient(self, request: pb.GradientRequest, context: grpc.ServicerContext) -> Any:
        return self.replies["Gradient"]

    def HessianEigen(self, request: pb.HessianEigenRequest, context: grpc.ServicerContext) -> Any:
        return self.replies["HessianEigen"]

    def HessianSpectrum(self, request: pb.HessianSpectrumRequest, context: grpc.ServicerContext) -> Any:
        return self.replies["HessianSpectrum"]

    def HessianChunked(self, request: pb.HessianRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self.replies["HessianChunked"]

    def EvaluateChunked(self, request: pb.EvaluateRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self.replies["EvaluateChunked"]

    def StreamHessian(
        self, requests: Iterator[pb.HessianRequest], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        replies = iter(self.replies["StreamHessian"])
        for _ in requests:
            yield next(replies)


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, CannedServicer]]:
    servicer = CannedServicer()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    hessian_service_pb2_grpc.add_HessianServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def _call(flavour: str, target: str, method: str, *args: Any, options: Any = None, **kwargs: Any) -> Any:
    """``method`` of a fresh ``Client`` (sync) or ``AsyncClient`` (async) on ``target``."""
    if flavour == "sync":
        with hessd.Client(target, timeout=30, options=options) as client:
            result = getattr(client, method)(*args, **kwargs)
            return list(result) if method == "stream" else result

    async def run() -> Any:
        async with hessd.AsyncClient(target, timeout=30, options=options) as client:
            if method == "stream":
                return [item async for item in client.stream(*args, **kwargs)]
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(run())


def _raises_without_allocating(error_type: type[Exception], call: Callable[[], Any]) -> Exception:
    """The ``error_type`` that ``call`` raises, checking that its peak allocation stayed small."""
    tracemalloc.start()
    try:
        with pytest.raises(error_type) as raised:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < SMALL_ALLOCATION_BYTES, f"{peak:,} bytes allocated for a refused reply"
    return raised.value


def _tensor(array: np.ndarray, **header: Any) -> Tensor:
    """``array`` encoded, with the header fields in ``header`` overriding its own."""
    tensor = tensor_codec.encode(array, field="result")
    for name, value in header.items():
        if name == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)
        else:
            setattr(tensor, name, value)
    return tensor


def _chunk(name: str, shape: tuple[int, ...], data: bytes, offset: int = 0, **fields: Any) -> ResultChunk:
    fields.setdefault("dtype", DataType.DATA_TYPE_FLOAT32)
    return ResultChunk(name=name, shape=shape, offset=offset, data=data, **fields)


HOSTILE_HESSIANS = {
    "64 TiB declared": _tensor(np.zeros(0, np.float32), shape=(B, D, 1 << 42)),
    "wrong batch size": _tensor(np.ones((B + 1, D, D), np.float32)),
    "wrong dtype": _tensor(np.ones((B, D, D), np.float64)),
    "unknown dtype": _tensor(HESSIAN, dtype=99),
    "negative dimension": _tensor(np.zeros(0, np.float32), shape=(B, D, -D)),
    "packed though not asked": _tensor(np.ones(B * D * (D + 1) // 2, np.float32), shape=(B, D, D), packing=Packing.PACKING_UPPER),
    "full though not asked": _tensor(np.ones((B, D, B, D), np.float32)),
    "missing": Tensor(),
}  # fmt: skip


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", HOSTILE_HESSIANS)
def test_a_hessian_reply_the_request_cannot_get_back_is_refused(
    fake: tuple[str, CannedServicer], flavour: str, case: str
) -> None:
    target, servicer = fake
    servicer.replies["Hessian"] = pb.HessianResponse(hessian=HOSTILE_HESSIANS[case])
    error = _raises_without_allocating(
        hessd.InvalidReplyError, lambda: _call(flavour, target, "hessian", "demo", X)
    )
    assert error.reason == "REPLY_INVALID" and error.field == "hessian"
    assert "(2, 3, 3)" in error.message and "Hessian" in error.message


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_honest_replies_of_every_kind_decode(fake: tuple[str, CannedServicer], flavour: str) -> None:
    target, servicer = fake
    servicer.replies["Hessian"] = pb.HessianResponse(hessian=_tensor(HESSIAN))
    servicer.replies["Gradient"] = pb.GradientResponse(gradient=_tensor(X))
    narrowed = np.ones(B * D * (D + 1) // 2, np.float16)
    servicer.replies["Evaluate"] = pb.EvaluateResponse(
        value=_tensor(np.ones(B, np.float16)),
        gradient=_tensor(np.ones((B, D), np.float16)),
        hessian=_tensor(narrowed, shape=(B, D, D), packing=Packing.PACKING_UPPER),
    )
    k = 2
    servicer.replies["HessianEigen"] = pb.HessianEigenResponse(
        eigenvalues=_tensor(np.ones((B, k))),
        eigenvectors=_tensor(np.ones((B, k, D))),
        residuals=_tensor(np.ones((B, k))),
    )
    clipped = np.ones((B, 4, D), np.float32)  # iterations clipped to D
    servicer.replies["HessianSpectrum"] = pb.HessianSpectrumResponse(
        nodes=_tensor(clipped), weights=_tensor(clipped)
    )
    np.testing.assert_array_equal(_call(flavour, target, "hessian", "demo", X), HESSIAN)
    np.testing.assert_array_equal(_call(flavour, target, "gradient", "demo", X), X)
    evaluation = _call(flavour, target, "evaluate", "demo", X, packing="upper", result_dtype="float16")
    assert [a.dtype for a in evaluation] == [np.float32] * 3 and evaluation.hessian.shape == (B, D, D)
    eigen = _call(flavour, target, "hessian_eigen", "demo", X, k=k, precision="float64")
    assert eigen.eigenvectors.shape == (B, k, D)
    spectrum = _call(flavour, target, "hessian_spectrum", "demo", X, probes=4, iterations=10)
    assert spectrum.nodes.shape == (B, 4, D)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_curvature_replies_beyond_their_options_are_refused(
    fake: tuple[str, CannedServicer], flavour: str
) -> None:
    target, servicer = fake
    servicer.replies["HessianEigen"] = pb.HessianEigenResponse(
        eigenvalues=_tensor(np.ones((B, 2), np.float32)),
        eigenvectors=_tensor(np.ones((B, 2, D), np.float32)),
        residuals=_tensor(np.ones((B, 2), np.float32)),
    )
    with pytest.raises(hessd.InvalidReplyError, match="eigenvalues"):
        _call(flavour, target, "hessian_eigen", "demo", X, k=1)
    longer = np.ones((B, 4, D + 1), np.float32)  # more Krylov steps than D
    servicer.replies["HessianSpectrum"] = pb.HessianSpectrumResponse(
        nodes=_tensor(longer), weights=_tensor(longer)
    )
    with pytest.raises(hessd.InvalidReplyError, match="nodes"):
        _call(flavour, target, "hessian_spectrum", "demo", X, probes=4, iterations=10)


HOSTILE_CHUNKS: dict[str, tuple[type[Exception], list[ResultChunk]]] = {
    "64 TiB declared": (hessd.InvalidReplyError, [_chunk("hessian", (B, D, 1 << 42), b"\0" * 64)]),
    "16 GiB declared": (hessd.InvalidReplyError, [_chunk("hessian", (B, 1 << 16, 1 << 15), b"\0" * 64)]),
    "a result of another name": (hessd.InvalidReplyError, [_chunk("secrets", (B, D, D), HESSIAN.tobytes())]),
    "wrong dtype": (hessd.InvalidReplyError, [_chunk("hessian", (B, D, D), HESSIAN.tobytes(), dtype=DataType.DATA_TYPE_INT32)]),
    "offset past the end": (hessd.TensorEncodingError, [_chunk("hessian", (B, D, D), b"\0" * 8, offset=1 << 40)]),
    "offset and length past int64": (hessd.TensorEncodingError, [
        _chunk("hessian", (B, D, D), b"\0" * 8),
        _chunk("hessian", (B, D, D), b"\0" * 8, offset=(1 << 63) - 1),
    ]),
    "more bytes than declared": (hessd.TensorEncodingError, [_chunk("hessian", (B, D, D), b"\0" * (HESSIAN.nbytes + 4))]),
    "empty chunks after the last": (hessd.TensorEncodingError, [
        _chunk("hessian", (B, D, D), HESSIAN.tobytes()),
        *[_chunk("hessian", (B, D, D), b"", offset=HESSIAN.nbytes)] * 3,
    ]),
}  # fmt: skip


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", HOSTILE_CHUNKS)
def test_a_chunked_reply_out_of_bounds_is_refused_before_its_buffer_is_allocated(
    fake: tuple[str, CannedServicer], flavour: str, case: str
) -> None:
    target, servicer = fake
    error_type, chunks = HOSTILE_CHUNKS[case]
    servicer.replies["HessianChunked"] = chunks
    _raises_without_allocating(
        error_type, lambda: _call(flavour, target, "hessian", "demo", X, options=TINY_RECEIVE)
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_evaluation_with_an_extra_result_is_refused(
    fake: tuple[str, CannedServicer], flavour: str
) -> None:
    target, servicer = fake
    honest = [
        _chunk("value", (B,), np.ones(B, np.float32).tobytes()),
        _chunk("gradient", (B, D), X.tobytes()),
        _chunk("hessian", (B, D, D), HESSIAN.tobytes()),
    ]
    servicer.replies["EvaluateChunked"] = honest
    evaluation = _call(flavour, target, "evaluate", "demo", X, options=TINY_RECEIVE)
    np.testing.assert_array_equal(evaluation.hessian, HESSIAN)
    servicer.replies["EvaluateChunked"] = [*honest, _chunk("hessian_again", (B, D, D), HESSIAN.tobytes())]
    with pytest.raises(hessd.InvalidReplyError, match="hessian_again"):
        _call(flavour, target, "evaluate", "demo", X, options=TINY_RECEIVE)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_stream_item_the_request_cannot_get_back_is_refused(
    fake: tuple[str, CannedServicer], flavour: str
) -> None:
    target, servicer = fake
    servicer.replies["StreamHessian"] = [
        pb.StreamHessianResponse(index=0, hessian=_tensor(HESSIAN)),
        pb.StreamHessianResponse(index=1, hessian=_tensor(np.zeros(0, np.float32), shape=(B, D, 1 << 42))),
    ]
    with pytest.raises(hessd.InvalidReplyError, match="hessian"):
        _call(flavour, target, "stream", "demo", [X, X], return_errors=True)
    servicer.replies["StreamHessian"] = [pb.StreamHessianResponse(index=0, hessian=_tensor(HESSIAN))] * 2
    items = _call(flavour, target, "stream", "demo", [X, X])
    assert [item.shape for item in items] == [(B, D, D)] * 2


def test_each_input_of_a_request_without_wrt_bounds_the_result(fake: tuple[str, CannedServicer]) -> None:
    target, servicer = fake
    x = {"a": X, "b": np.ones((B, 5), np.float32)}
    servicer.replies["Gradient"] = pb.GradientResponse(gradient=_tensor(np.ones((B, 5), np.float32)))
    assert _call("sync", target, "gradient", "demo", x).shape == (B, 5)
    with pytest.raises(hessd.InvalidReplyError):
        _call("sync", target, "gradient", "demo", x, wrt="a")
