"""The shared wire pieces without a server: tensor codec, chunking and the status mapping."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hessd import chunks, errors, status_codes, tensor_codec
from hessd.v1.tensor_pb2 import DataType, Packing, ResultChunk, Tensor

WIRE_DTYPES = ["float32", "float64", "float16", ml_dtypes.bfloat16, "int32", "int64"]


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4), (1, 0, 2)])
def test_round_trip_keeps_dtype_shape_and_values(dtype: object, shape: tuple[int, ...]) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(dtype)
    decoded = tensor_codec.decode(tensor_codec.encode(array, field="x"), field="x")
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert np.array_equal(decoded, array)
    assert not decoded.flags.writeable


@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.float16]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_round_trip_is_bit_exact(array: np.ndarray) -> None:
    decoded = tensor_codec.decode(tensor_codec.encode(array, field="x"), field="x")
    assert decoded.tobytes() == array.tobytes() and decoded.shape == array.shape


def test_bytes_are_little_endian_row_major_whatever_the_input_layout() -> None:
    big_endian_fortran = np.asfortranarray(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=">f4"))
    tensor = tensor_codec.encode(big_endian_fortran, field="x")
    assert tensor.dtype == DataType.DATA_TYPE_FLOAT32 and list(tensor.shape) == [2, 2]
    assert tensor.data == np.array([1, 2, 3, 4], dtype="<f4").tobytes()


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_each_wire_dtype_in_either_byte_order_has_its_data_type(dtype: object, byte_order: str) -> None:
    native = np.dtype(dtype)
    array = np.arange(5).astype(native.newbyteorder(byte_order))
    expected = DataType.Value(f"DATA_TYPE_{native.name.upper()}")
    assert tensor_codec.data_type_of(array.dtype) == expected
    data_type, data = tensor_codec.wire_bytes(array, field="x")
    assert data_type == expected
    assert bytes(data) == np.arange(5).astype(native.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("dtype", ["bool", "uint8", "complex64", "int16", "<U3", ">c8"])
def test_a_dtype_no_tensor_carries_has_no_data_type(dtype: str) -> None:
    assert tensor_codec.data_type_of(np.dtype(dtype)) is None


F32 = DataType.DATA_TYPE_FLOAT32
MALFORMED_TENSORS = {
    "short": (Tensor(dtype=F32, shape=[2, 3], data=b"\0" * 23), "data", "TENSOR_BYTE_COUNT_MISMATCH"),
    "long": (
        Tensor(dtype=DataType.DATA_TYPE_FLOAT64, shape=[2], data=b"\0" * 8),
        "data",
        "TENSOR_BYTE_COUNT_MISMATCH",
    ),
    "negative-dim": (Tensor(dtype=F32, shape=[-1], data=b""), "shape", "TENSOR_SHAPE_NEGATIVE"),
    "unspecified-dtype": (
        Tensor(dtype=DataType.DATA_TYPE_UNSPECIFIED, shape=[1], data=b"\0" * 4),
        "dtype",
        "TENSOR_DTYPE_UNKNOWN",
    ),
    "unknown-dtype": (Tensor(dtype=99, shape=[1], data=b"\0" * 4), "dtype", "TENSOR_DTYPE_UNKNOWN"),
    "rank-65": (Tensor(dtype=F32, shape=[1] * 65, data=b"\0" * 4), "shape", "TENSOR_RANK_EXCEEDS_LIMIT"),
    "huge-beside-zero": (
        Tensor(dtype=F32, shape=[2**63 - 1, 0], data=b""),
        "shape",
        "TENSOR_SHAPE_EXCEEDS_LIMIT",
    ),
    "two-huge-beside-zero": (
        Tensor(dtype=F32, shape=[0, 2**40, 2**40], data=b""),
        "shape",
        "TENSOR_SHAPE_EXCEEDS_LIMIT",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_TENSORS))
def test_malformed_tensor_is_a_tensor_encoding_error(case: str) -> None:
    tensor, part, reason = MALFORMED_TENSORS[case]
    with pytest.raises(errors.TensorEncodingError) as raised:
        tensor_codec.decode(tensor, field="x[a]")
    assert raised.value.field == f"x[a].{part}"
    assert raised.value.reason == reason
    assert len(raised.value.message) < 300


def test_byte_count_mismatch_carries_expected_and_actual_bytes() -> None:
    with pytest.raises(errors.TensorEncodingError) as raised:
        tensor_codec.decode(Tensor(dtype=F32, shape=[2, 3], data=b"\0" * 23), field="v")
    assert raised.value.metadata == {"expected_bytes": "24", "actual_bytes": "23"}


@pytest.mark.parametrize("shape", [[0, 1_000_001], [1_000_001, 0], [0, 1000, 1001]])
def test_a_byte_limit_bounds_every_dimension_even_beside_a_zero(shape: list[int]) -> None:
    tensor = Tensor(dtype=F32, shape=shape, data=b"")
    with pytest.raises(errors.TensorEncodingError) as raised:
        tensor_codec.decode(tensor, field="x", max_bytes=4_000_000)
    assert raised.value.metadata == {"max_bytes": "4000000"}
    assert tensor_codec.decode(tensor, field="x").shape == tuple(shape)


def test_sixteen_dimensions_are_the_most() -> None:
    tensor = Tensor(dtype=F32, shape=[1] * tensor_codec.MAX_RANK, data=b"\0" * 4)
    assert tensor_codec.decode(tensor, field="x").ndim == tensor_codec.MAX_RANK


def test_chunks_of_an_oversized_shape_are_refused_before_allocating() -> None:
    chunk = ResultChunk(name="hessian", dtype=F32, shape=[2**40, 2**40], offset=0, data=b"")
    with pytest.raises(errors.TensorEncodingError, match="non-zero dimensions"):
        chunks.Reassembler().add(chunk)


@pytest.mark.parametrize("dtype", ["bool", "uint8", "complex64", "int16", "<U3"])
def test_unsupported_array_dtype_is_a_dtype_error(dtype: str) -> None:
    with pytest.raises(errors.DtypeError, match="astype"):
        tensor_codec.encode(np.zeros(2, dtype=dtype), field="v")


def test_precision_round_trip_and_refusal() -> None:
    for precision in (None, "float32", "float64"):
        assert tensor_codec.decode_precision(tensor_codec.encode_precision(precision)) == precision
    with pytest.raises(errors.PrecisionError):
        tensor_codec.encode_precision("double")
    with pytest.raises(errors.PrecisionError):
        tensor_codec.decode_precision(42)


def _chunks_of(array: np.ndarray, chunk_bytes: int) -> list[ResultChunk]:
    data_type, data = tensor_codec.wire_bytes(array, field="hessian")
    serialized = chunks.serialized_chunks(
        "hessian", data_type, array.shape, Packing.PACKING_NONE, data, chunk_bytes=chunk_bytes
    )
    return [ResultChunk.FromString(piece) for piece in serialized]


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 64])
def test_chunks_reassemble_exactly(size: int) -> None:
    array = np.arange(size, dtype=np.float64).reshape(size, 1)
    pieces = _chunks_of(array, chunk_bytes=16)
    assert all(len(piece.data) <= 16 for piece in pieces) and len(pieces) >= 1
    reassembler = chunks.Reassembler()
    for piece in pieces:
        reassembler.add(piece)
    (result,) = reassembler.arrays(("hessian",))
    assert result.dtype == array.dtype and result.shape == array.shape
    assert np.array_equal(result, array)


def test_chunks_out_of_order_or_missing_are_refused() -> None:
    pieces = _chunks_of(np.arange(8, dtype=np.float32), chunk_bytes=8)
    reassembler = chunks.Reassembler()
    reassembler.add(pieces[0])
    with pytest.raises(errors.TensorEncodingError):
        reassembler.add(pieces[2])
    reassembler.add(pieces[1])
    with pytest.raises(errors.TensorEncodingError, match="ended after"):
        reassembler.arrays(("hessian",))


@pytest.mark.parametrize(
    ("first_bytes", "offset", "length"),
    [(None, 0, 36), (8, 8, 28), (8, 2**64 - 8, 16), (32, 32, 4)],
    ids=["past the end at once", "past the end later", "offset plus length wraps", "after the last byte"],
)
def test_a_chunk_that_overflows_its_tensor_is_refused(first_bytes: int | None, offset: int, length: int) -> None:
    declared = dict(name="hessian", dtype=F32, shape=[8])
    reassembler = chunks.Reassembler()
    if first_bytes is not None:
        reassembler.add(ResultChunk(**declared, offset=0, data=b"\1" * first_bytes))
    with pytest.raises(errors.TensorEncodingError, match="covers bytes"):
        reassembler.add(ResultChunk(**declared, offset=offset, data=b"\2" * length))
    with pytest.raises(errors.TensorEncodingError, match="held"):
        chunks.Reassembler().arrays(("hessian",))


EXPECTED_CODES = {
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ShapeError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.DtypeError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnknownInputError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.OutputWeightsError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PrecisionError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TensorEncodingError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.MalformedRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.ResultTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.OutOfMemoryError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.BatchDependenceError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.CancelledError: grpc.StatusCode.CANCELLED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
    errors.InvalidReplyError: grpc.StatusCode.DATA_LOSS,
    errors.SharedMemoryError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidSharedMemoryError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.SharedMemoryNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.SharedMemoryPermissionError: grpc.StatusCode.PERMISSION_DENIED,
    errors.SharedMemoryExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.HessdError: grpc.StatusCode.UNKNOWN,
}


def test_every_error_type_has_its_code() -> None:
    assert set(EXPECTED_CODES) == set(errors.ERROR_TYPES.values())
    for error_type, code in EXPECTED_CODES.items():
        assert status_codes.status_code(error_type("m")) == code


@pytest.mark.parametrize(
    "error_type", list(errors.ERROR_TYPES.values()), ids=list(errors.ERROR_TYPES)
)
@pytest.mark.parametrize("field", [None, "output_weights"])
def test_status_round_trip_restores_class_message_and_field(
    error_type: type[errors.HessdError], field: str | None
) -> None:
    status = status_codes.to_status(error_type("what to fix", field=field))
    assert status.code == EXPECTED_CODES[error_type].value[0]
    restored = status_codes.from_status(status_pb2.Status.FromString(status.SerializeToString()))
    assert type(restored) is error_type
    assert (restored.message, restored.field) == ("what to fix", field)
    assert restored.reason == error_type.default_reason


def test_status_carries_reason_and_metadata_and_names_the_class() -> None:
    error = errors.ResultTooLargeError(
        "m", reason="REPLY_EXCEEDS_MESSAGE_SIZE", metadata={"reply_bytes": 5, "retry_rpc": "X"}
    )
    status = status_codes.to_status(error)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "REPLY_EXCEEDS_MESSAGE_SIZE" and info.domain == "hessd.v1"
    assert dict(info.metadata) == {
        "reply_bytes": "5",
        "retry_rpc": "X",
        "exception": "ResultTooLargeError",
    }
    restored = status_codes.from_status(status)
    assert type(restored) is errors.ResultTooLargeError
    assert restored.reason == "REPLY_EXCEEDS_MESSAGE_SIZE"
    assert restored.metadata == {"reply_bytes": "5", "retry_rpc": "X"}


@pytest.mark.parametrize("error_type", list(errors.ERROR_TYPES.values()))
def test_every_default_reason_is_upper_snake_case_and_distinct(
    error_type: type[errors.HessdError],
) -> None:
    assert re.fullmatch(r"[A-Z][A-Z0-9_]+[A-Z0-9]", error_type.default_reason)
    others = [t for t in errors.ERROR_TYPES.values() if t is not error_type]
    assert error_type.default_reason not in {t.default_reason for t in others}


def test_long_messages_and_fields_are_cut_in_the_status() -> None:
    status = status_codes.to_status(errors.ShapeError("m" * 100_000, field="x[" + "k" * 100_000 + "]"))
    assert len(status.SerializeToString()) < 4096
    restored = status_codes.from_status(status)
    assert restored.message.endswith("…") and restored.field.endswith("…")


def test_clipped_quotes_short_text_whole_and_cuts_long_text() -> None:
    assert errors.clipped("wrt") == "'wrt'"
    long = errors.clipped("é" * 2000)
    assert long.startswith("'" + "é" * 64 + "…'") and "2,000 characters" in long


def test_status_without_details_falls_back_to_the_code() -> None:
    bare = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="gone")
    assert type(status_codes.from_status(bare)) is errors.ModelNotFoundError
    unmapped = status_pb2.Status(code=grpc.StatusCode.PERMISSION_DENIED.value[0], message="no")
    restored = status_codes.from_status(unmapped)
    assert type(restored) is errors.HessdError and "PERMISSION_DENIED" in restored.message


def test_the_errors_guide_lists_every_reason() -> None:
    root = Path(__file__).resolve().parents[2]
    sources = [*(root / "client" / "hessd").glob("*.py"), *(root / "server").rglob("*.py")]
    reasons = {t.default_reason for t in errors.ERROR_TYPES.values()}
    for source in sources:
        reasons |= set(re.findall(r'reason="([A-Z0-9_]+)"', source.read_text()))
    table = (root / "docs" / "guides" / "errors.md").read_text()
    listed = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", table, re.M))
    assert reasons <= listed, sorted(reasons - listed)
    assert len(reasons) > 20
