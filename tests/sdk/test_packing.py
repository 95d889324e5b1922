"""Packed results, narrowed dtypes and the zero-copy wire helpers, against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hessd import chunks, packing, tensor_codec, wire_format
from hessd.errors import TensorEncodingError
from hessd.v1.tensor_pb2 import DataType, Packing, ResultChunk


def _mirrored(square: np.ndarray) -> np.ndarray:
    return np.triu(square) + np.transpose(np.triu(square, 1), (0, 2, 1))


@given(
    count=st.integers(0, 3),
    rows=st.lists(st.integers(0, 5), min_size=1, max_size=2),
    full=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_unpacking_mirrors_the_upper_triangle(
    count: int, rows: list[int], full: bool, seed: int
) -> None:
    shape = (*rows, *rows) if full else (count, *rows, *rows)
    array = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    matrices, n = packing.matrices(shape)
    packed = packing.pack_upper(array)
    assert packed.size == matrices * n * (n + 1) // 2 == packing.packed_elements(shape)
    square = array.reshape(matrices, n, n)
    assert np.array_equal(packed, square[:, *np.triu_indices(n)].reshape(-1))
    unpacked = packing.unpack_upper(packed, shape)
    assert np.array_equal(unpacked.reshape(matrices, n, n), _mirrored(square))


def test_a_large_block_crosses_tiles_exactly() -> None:
    square = np.random.default_rng(1).standard_normal((2, 150, 150))
    assert np.array_equal(packing.unpack_upper(packing.pack_upper(square), square.shape), _mirrored(square))


@pytest.mark.parametrize("shape", [(), (3, 4), (2, 3, 4), (2, 3, 2, 4)])
def test_shapes_that_are_no_stack_of_square_matrices_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(TensorEncodingError):
        packing.matrices(shape)


def test_packed_bytes_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(TensorEncodingError, match="needs 24"):
        tensor_codec.from_bytes(
            DataType.DATA_TYPE_FLOAT32, (1, 3, 3), b"\0" * 20, field="hessian",
            packing=Packing.PACKING_UPPER,
        )
    with pytest.raises(TensorEncodingError, match="packing"):
        tensor_codec.nbytes(DataType.DATA_TYPE_FLOAT32, (1, 3, 3), field="hessian", packing=9)


def test_widening_is_exact_and_read_only() -> None:
    narrow = np.array([1.5, -2.25, 65504.0], np.float16)
    wide = packing.widened(narrow, "float64")
    assert wide.dtype == np.float64 and np.array_equal(wide, narrow) and not wide.flags.writeable


@given(st.binary(max_size=300), st.integers(1, 64))
def test_serialized_chunks_are_resultchunks_and_reassemble(data: bytes, chunk_bytes: int) -> None:
    pieces = chunks.serialized_chunks(
        "value", DataType.DATA_TYPE_INT32 if len(data) % 4 == 0 else DataType.DATA_TYPE_FLOAT16,
        (len(data) // (4 if len(data) % 4 == 0 else 2),), 0, memoryview(data),
        chunk_bytes=chunk_bytes, model_version="3",
    ) if len(data) % 2 == 0 else []
    reassembler = chunks.Reassembler()
    for piece in pieces:
        parsed = ResultChunk.FromString(piece)
        assert parsed.model_version == "3" and len(parsed.data) <= chunk_bytes
        reassembler.add_serialized(piece)
    if pieces:
        (array,) = reassembler.arrays(("value",))
        assert array.tobytes() == data and reassembler.model_version == "3"


@pytest.mark.parametrize("raw", [b"\x2a", b"\x2a\x05ab", b"\x0f", b"\x08\xff\xff"])
def test_malformed_chunks_are_encoding_errors(raw: bytes) -> None:
    with pytest.raises(TensorEncodingError):
        chunks.Reassembler().add_serialized(raw)


def test_cut_field_keeps_the_last_occurrence_and_every_other_field() -> None:
    first = ResultChunk(name="h", data=b"old").SerializeToString()
    second = ResultChunk(offset=7, data=b"new").SerializeToString()
    rest, value = wire_format.cut_field(first + second, 5)
    assert bytes(value) == b"new"
    assert ResultChunk.FromString(rest) == ResultChunk(name="h", offset=7)
