"""numpy arrays to and from ``hessd.v1.Tensor``: raw little-endian, row-major bytes.

:func:`encode` is the one place that calls ``tobytes`` and :func:`from_bytes` the one
place that calls ``np.frombuffer``; every tensor on the wire passes through them.
float16, float32, float64, int32 and int64 need only numpy; bfloat16 needs
``ml_dtypes``, used when it is importable (the SDK does not require it).

Every shape is checked before numpy sees it: at most :data:`MAX_RANK`
dimensions, none negative, and the product of its non-zero dimensions times the
itemsize within a byte limit (the server's max message size for requests,
:data:`MAX_TENSOR_BYTES` otherwise), so that a zero dimension beside huge ones
is refused too. Errors name the offending part as a field path:
``<field>.dtype``, ``<field>.shape`` or ``<field>.data``.

>>> t = encode(np.ones((2, 3), np.float32), field="x")
>>> (t.dtype == DataType.DATA_TYPE_FLOAT32, list(t.shape), len(t.data))
(True, [2, 3], 24)
>>> decode(t, field="x").shape
(2, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hessd import packing as packing_layout
from hessd.errors import DtypeError, PrecisionError, TensorEncodingError, clipped
from hessd.v1.tensor_pb2 import DATA_TYPE_UNSPECIFIED, PACKING_NONE, PACKING_UPPER, DataType, Packing, Tensor

try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None

_WIRE_DTYPES: dict[int, np.dtype] = {
    DataType.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    DataType.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    DataType.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    DataType.DATA_TYPE_INT32: np.dtype("<i4"),
    DataType.DATA_TYPE_INT64: np.dtype("<i8"),
}
if ml_dtypes is not None:
    _WIRE_DTYPES[DataType.DATA_TYPE_BFLOAT16] = np.dtype(ml_dtypes.bfloat16)
_NATIVE_DTYPES: dict[int, np.dtype] = {code: dtype.newbyteorder("=") for code, dtype in _WIRE_DTYPES.items()}
"""Each wire dtype in this machine's byte order: what decoded arrays hold."""

_DATA_TYPES_BY_NAME: dict[str, int] = {
    "float32": DataType.DATA_TYPE_FLOAT32,
    "float64": DataType.DATA_TYPE_FLOAT64,
    "float16": DataType.DATA_TYPE_FLOAT16,
    "bfloat16": DataType.DATA_TYPE_BFLOAT16,
    "int32": DataType.DATA_TYPE_INT32,
    "int64": DataType.DATA_TYPE_INT64,
}
_NAMES_BY_DATA_TYPE: dict[int, str] = {code: name for name, code in _DATA_TYPES_BY_NAME.items()}
_DATA_TYPES_BY_NATIVE_DTYPE: dict[np.dtype, int] = {
    np.dtype(name): code for name, code in _DATA_TYPES_BY_NAME.items() if name != "bfloat16"
}
"""The ``DataType`` of each native-order numpy dtype: a lookup by the dtype itself, which
numpy answers without building the dtype's name (``dtype.name`` is computed in Python)."""
if ml_dtypes is not None:
    _DATA_TYPES_BY_NATIVE_DTYPE[np.dtype(ml_dtypes.bfloat16)] = DataType.DATA_TYPE_BFLOAT16

SUPPORTED_DTYPES: tuple[str, ...] = tuple(_DATA_TYPES_BY_NAME)
"""The dtype names a wire tensor can carry."""

MAX_RANK = 16
"""The most dimensions a wire tensor may have."""

MAX_TENSOR_BYTES = 1 << 48
"""The byte limit of a decoded tensor when the caller gives none (256 TiB: far
above any real result, far below what overflows numpy's size arithmetic)."""


def encode(array: npt.ArrayLike, *, field: str) -> Tensor:
    """Encode an array as a wire tensor.

    Args:
        array: an array-like of shape S and dtype float16, bfloat16, float32,
            float64, int32 or int64; other element types raise.
        field: the request field the array is for, named in errors.

    Returns:
        A ``Tensor`` with the array's dtype and shape and its elements as
        little-endian bytes in row-major order.

    Raises:
        DtypeError: the array's dtype is none of those.
    """
    array = np.asarray(array)
    data_type = data_type_of(array.dtype)
    if data_type is None:
        raise DtypeError(
            f"{field} has dtype {array.dtype}, but hessd tensors are one of "
            f"{', '.join(SUPPORTED_DTYPES)}; convert it, e.g. {field}.astype(np.float32).",
            field=field,
        )
    wire_dtype = _wire_dtype(data_type, field=field)
    return Tensor(
        dtype=data_type,
        shape=array.shape,
        data=array.astype(wire_dtype, copy=False).tobytes(order="C"),
    )


def wire_bytes(array: np.ndarray, *, field: str) -> tuple[int, memoryview]:
    """The ``DataType`` and wire bytes of ``array``, a view of it when it is already
    little-endian and row-major (a copy otherwise). What :func:`encode` puts in ``data``.

    Raises:
        DtypeError: as for :func:`encode`.
    """
    data_type = data_type_of(array.dtype)
    if data_type is None:
        raise DtypeError(f"{field} has dtype {array.dtype}, which no hessd tensor carries.", field=field)
    wire = np.ascontiguousarray(array, dtype=_wire_dtype(data_type, field=field))
    return data_type, memoryview(wire.reshape(-1).view(np.uint8))


def data_type_of(dtype: np.dtype) -> int | None:
    """The ``DataType`` of arrays of ``dtype`` (of either byte order); ``None`` for a
    dtype no hessd tensor carries."""
    found = _DATA_TYPES_BY_NATIVE_DTYPE.get(dtype)
    return _DATA_TYPES_BY_NAME.get(dtype.name) if found is None else found


def decode(tensor: Tensor, *, field: str, max_bytes: int | None = None) -> np.ndarray:
    """Decode a wire tensor into a read-only array of its dtype and shape.

    Args:
        tensor: the wire tensor.
        field: the request or reply field the tensor came in, as a path
            (``"x[input_1]"``, ``"v"``, ``"hessian"``); named in errors.
        max_bytes: the largest tensor to accept, counted over its non-zero
            dimensions; ``None`` means :data:`MAX_TENSOR_BYTES`.

    Raises:
        TensorEncodingError: unknown dtype, a shape over the limits (see
            :func:`nbytes`), or a byte count other than product(shape) * itemsize.
    """
    return from_bytes(
        tensor.dtype, tensor.shape, tensor.data, field=field, packing=tensor.packing, max_bytes=max_bytes
    )


def from_bytes(
    data_type: int,
    shape: Sequence[int],
    data: bytes | bytearray | memoryview,
    *,
    field: str,
    packing: int = Packing.PACKING_NONE,
    max_bytes: int | None = None,
) -> np.ndarray:
    """View raw little-endian row-major bytes as a read-only array, without copying
    (unless ``packing`` is ``PACKING_UPPER``: then the mirrored matrices are a new array).

    Args:
        data_type: a ``DataType`` value.
        shape: the array's shape.
        data: exactly ``nbytes(data_type, shape, packing=packing)`` bytes.
        field: named in errors.
        packing: a ``Packing`` value (see :mod:`hessd.packing`).
        max_bytes: as for :func:`decode`.

    Raises:
        TensorEncodingError: as for :func:`decode`.
    """
    shape = tuple(shape)
    expected = nbytes(data_type, shape, field=field, packing=packing, max_bytes=max_bytes)
    if len(data) != expected:
        raise TensorEncodingError(
            f"{field} holds {len(data):,} bytes, but shape {tuple(shape)} of "
            f"{dtype_name(data_type, field=field)} needs {expected:,}; send "
            "product(shape) * itemsize little-endian bytes.",
            field=f"{field}.data",
            reason="TENSOR_BYTE_COUNT_MISMATCH",
            metadata={"expected_bytes": expected, "actual_bytes": len(data)},
        )
    array = np.frombuffer(data, dtype=_wire_dtype(data_type, field=field))
    native = _NATIVE_DTYPES[data_type]
    if array.dtype != native:
        array = array.astype(native, copy=False)
    if packing == PACKING_UPPER:
        array = packing_layout.unpack_upper(array, shape, field=field)
    array = array.reshape(shape)
    array.flags.writeable = False
    return array


def nbytes(
    data_type: int,
    shape: Sequence[int],
    *,
    field: str,
    packing: int = Packing.PACKING_NONE,
    max_bytes: int | None = None,
) -> int:
    """Bytes of a tensor of this ``DataType``, shape and ``Packing``, once the shape
    passes the limits.

    Args:
        max_bytes: as for :func:`decode`.

    Raises:
        TensorEncodingError: unknown dtype or packing; more than :data:`MAX_RANK`
            dimensions; a negative dimension; non-zero dimensions whose product
            times the itemsize exceeds ``max_bytes``; or a packing the shape does
            not allow.
    """
    itemsize = _wire_dtype(data_type, field=field).itemsize
    if len(shape) > MAX_RANK:
        raise TensorEncodingError(
            f"{field} has {len(shape)} dimensions; tensors have at most {MAX_RANK}.",
            field=f"{field}.shape",
            reason="TENSOR_RANK_EXCEEDS_LIMIT",
            metadata={"rank": len(shape), "max_rank": MAX_RANK},
        )
    if shape and min(shape) < 0:
        raise TensorEncodingError(
            f"{field} has shape {tuple(shape)}; dimensions must be >= 0.",
            field=f"{field}.shape",
            reason="TENSOR_SHAPE_NEGATIVE",
        )
    limit = MAX_TENSOR_BYTES if max_bytes is None else max_bytes
    elements = math.prod(shape)
    span = itemsize * (elements if elements else math.prod(filter(None, shape)))
    if span > limit:
        raise TensorEncodingError(
            f"{field} has shape {tuple(shape)}, whose non-zero dimensions span over "
            f"{limit:,} bytes of {dtype_name(data_type, field=field)}, the most a tensor "
            "may take here; send smaller tensors.",
            field=f"{field}.shape",
            reason="TENSOR_SHAPE_EXCEEDS_LIMIT",
            metadata={"max_bytes": limit},
        )
    if packing == PACKING_NONE:
        return elements * itemsize
    if packing == PACKING_UPPER:
        return packing_layout.packed_elements(shape, field=field) * itemsize
    raise TensorEncodingError(
        f"{field} has packing enum value {packing}; expected PACKING_NONE or PACKING_UPPER.",
        field=field,
    )


def numpy_dtype(data_type: int, *, field: str) -> np.dtype:
    """The numpy dtype of a ``DataType`` value, little-endian.

    Raises:
        TensorEncodingError: unknown dtype, or bfloat16 without ``ml_dtypes``.
    """
    return _wire_dtype(data_type, field=field)


def dtype_name(data_type: int, *, field: str) -> str:
    """The numpy name (``"float32"``...) of a ``DataType`` value.

    Raises:
        TensorEncodingError: the value names no supported dtype.
    """
    name = _NAMES_BY_DATA_TYPE.get(data_type)
    if name is None:
        raise TensorEncodingError(
            f"{field} has dtype enum value {data_type}; use one of "
            f"{', '.join(f'DATA_TYPE_{n.upper()}' for n in SUPPORTED_DTYPES)}.",
            field=f"{field}.dtype",
            reason="TENSOR_DTYPE_UNKNOWN",
            metadata={"dtype": data_type},
        )
    return name


def encode_precision(precision: str | None) -> int:
    """The ``DataType`` carrying the library's ``precision`` argument; ``None`` is unspecified.

    Raises:
        PrecisionError: ``precision`` is no dtype name a tensor can carry.
    """
    if precision is None:
        return DATA_TYPE_UNSPECIFIED
    data_type = _DATA_TYPES_BY_NAME.get(str(precision))
    if data_type is None:
        raise PrecisionError(
            f"precision is {clipped(precision)}; use None, 'float32' or 'float64'.", field="precision"
        )
    return data_type


def decode_precision(data_type: int) -> str | None:
    """The library's ``precision`` argument for a request's ``precision`` field.

    Raises:
        PrecisionError: the value names no dtype.
    """
    if data_type == DATA_TYPE_UNSPECIFIED:
        return None
    name = _NAMES_BY_DATA_TYPE.get(data_type)
    if name is None:
        raise PrecisionError(
            f"precision has enum value {data_type}; use DATA_TYPE_UNSPECIFIED, "
            "DATA_TYPE_FLOAT32 or DATA_TYPE_FLOAT64.",
            field="precision",
        )
    return name


def _wire_dtype(data_type: int, *, field: str) -> np.dtype:
    wire_dtype = _WIRE_DTYPES.get(data_type)
    if wire_dtype is None:
        name = dtype_name(data_type, field=field)
        raise TensorEncodingError(
            f"{field} is {name}, which needs the ml_dtypes package on this side; "
            "pip install ml_dtypes, or send float32.",
            field=f"{field}.dtype",
            reason="TENSOR_DTYPE_UNAVAILABLE",
            metadata={"dtype": name},
        )
    return wire_dtype


__all__ = [
    "MAX_RANK",
    "MAX_TENSOR_BYTES",
    "SUPPORTED_DTYPES",
    "data_type_of",
    "decode",
    "decode_precision",
    "dtype_name",
    "encode",
    "encode_precision",
    "from_bytes",
    "nbytes",
    "numpy_dtype",
    "wire_bytes",
]
