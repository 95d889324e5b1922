"""Compact results: upper triangles of symmetric matrices, and narrower floats.

A Hessian is symmetric, so ``packing="upper"`` sends only the upper triangle
of each matrix (n (n + 1) / 2 of n * n elements) and the receiver mirrors it.
The matrices of a tensor follow from its rank (``hessd.v1.Packing``): odd rank
2k + 1, e.g. per-example blocks (B, *S, *S), is shape[0] matrices of
n = prod(shape[1:k+1]); even rank 2k, e.g. a full Hessian (B, *S, B, *S), is one
matrix of n = prod(shape[:k]).

>>> h = np.array([[[1.0, 2.0], [2.0, 3.0]]], np.float32)
>>> pack_upper(h).tolist()
[1.0, 2.0, 3.0]
>>> unpack_upper(pack_upper(h), h.shape).tolist()
[[[1.0, 2.0], [2.0, 3.0]]]
>>> widened(np.array([1.5], np.float16), "float32").dtype
dtype('float32')
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from hessd.errors import TensorEncodingError

PACKINGS: tuple[str, ...] = ("none", "upper")
"""The ``packing`` arguments the SDK accepts."""

RESULT_DTYPES: tuple[str, ...] = ("float16", "bfloat16")
"""The ``result_dtype`` arguments the SDK accepts, besides ``None`` (the precision)."""

_PRECISION_DTYPES: dict[str | None, np.dtype] = {
    None: np.dtype(np.float32),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
"""The dtype of each common ``precision``, looked up rather than parsed on every reply."""


def matrices(shape: Sequence[int], *, field: str = "hessian") -> tuple[int, int]:
    """(count, n): how many symmetric n x n matrices a tensor of ``shape`` holds.

    Raises:
        TensorEncodingError: the shape is no stack of square matrices.
    """
    shape = tuple(shape)
    rank = len(shape)
    if rank == 0:
        raise TensorEncodingError(f"{field} is a scalar; only matrices can be packed.", field=field)
    count, rows = (shape[0], shape[1:]) if rank % 2 else (1, shape)
    half = len(rows) // 2
    if rows[:half] != rows[half:]:
        raise TensorEncodingError(
            f"{field} has shape {shape}, which is no stack of square matrices; "
            "only Hessians can be packed.",
            field=field,
        )
    return count, math.prod(rows[:half])


def packed_elements(shape: Sequence[int], *, field: str = "hessian") -> int:
    """Elements of the packed form of a tensor of ``shape``: count * n (n + 1) / 2."""
    count, n = matrices(shape, field=field)
    return count * n * (n + 1) // 2


def pack_upper(array: np.ndarray, *, field: str = "hessian") -> np.ndarray:
    """The upper triangles of ``array``'s matrices, row by row: a new 1-D array."""
    count, n = matrices(array.shape, field=field)
    square = array.reshape(count, n, n)
    packed = np.empty((count, n * (n + 1) // 2), dtype=array.dtype)
    for i, start in enumerate(_row_starts(n)):
        packed[:, start : start + n - i] = square[:, i, i:]
    return packed.reshape(-1)


def unpack_upper(packed: np.ndarray, shape: Sequence[int], *, field: str = "hessian") -> np.ndarray:
    """The full tensor of ``shape`` whose upper triangles ``packed`` (1-D) holds, mirrored."""
    count, n = matrices(shape, field=field)
    expected = count * n * (n + 1) // 2
    if packed.size != expected:
        raise TensorEncodingError(
            f"{field} holds {packed.size:,} packed elements, but shape {tuple(shape)} needs "
            f"{expected:,}.",
            field=field,
        )
    rows = packed.reshape(count, n * (n + 1) // 2)
    square = np.empty((count, n, n), dtype=packed.dtype)
    for i, start in enumerate(_row_starts(n)):
        square[:, i, i:] = rows[:, start : start + n - i]
    _mirror_upper(square)
    return square.reshape(tuple(shape))


_TILE = 128
"""Side of the square tiles mirrored at once: a tile and its transpose stay in cache."""


def _mirror_upper(square: np.ndarray) -> None:
    """Fill the strict lower triangles of ``square`` (count, n, n) from its upper ones.

    numpy copies a transposed view element by element; tile by tile, both the
    tile read and the tile written stay in cache, which halves the time of
    transposing whole strips.
    """
    n = square.shape[-1]
    for top in range(0, n, _TILE):
        bottom = min(top + _TILE, n)
        for left in range(0, top, _TILE):
            right = left + _TILE
            square[:, top:bottom, left:right] = square[:, left:right, top:bottom].transpose(0, 2, 1)
        diagonal = square[:, top:bottom, top:bottom]
        np.copyto(diagonal, diagonal.transpose(0, 2, 1), where=_strictly_lower(bottom - top))


@functools.lru_cache(maxsize=4)
def _strictly_lower(size: int) -> np.ndarray:
    """The (size, size) mask of the elements below the diagonal."""
    mask = np.tri(size, k=-1, dtype=bool)
    mask.flags.writeable = False
    return mask


def _row_starts(n: int) -> list[int]:
    """Where each row's upper part begins in a packed n x n matrix."""
    return [i * n - i * (i - 1) // 2 for i in range(n)]


def widened(array: np.ndarray, precision: str | None) -> np.ndarray:
    """``array`` in the dtype of ``precision`` (float32 when ``None``); exact for narrower floats."""
    target = _PRECISION_DTYPES.get(precision) or np.dtype(precision)
    if array.dtype == target:
        return array
    wide = array.astype(target)
    wide.flags.writeable = False
    return wide


__all__ = [
    "PACKINGS",
    "RESULT_DTYPES",
    "matrices",
    "pack_upper",
    "packed_elements",
    "unpack_upper",
]
