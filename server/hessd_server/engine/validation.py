"""Up-front checks of a request, before anything is traced or computed.

Every failure raises a ``hessd.errors`` type whose message says what to fix
and whose ``field`` is a path into the request: ``x`` for the inputs as a
whole, ``x[key]`` for one input (``key`` as the caller keyed it; the model's
input name when ``x`` was one array), ``wrt``, ``output_weights``, ``v`` or
``precision``. Caller-supplied strings are quoted clipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from hessd.errors import (
    DtypeError,
    InvalidArgumentError,
    OutputWeightsError,
    PrecisionError,
    ResultTooLargeError,
    ShapeError,
    UnknownInputError,
    clipped,
    clipped_path,
)

from .model import PRECISIONS, Model, TensorInfo


@dataclass(frozen=True)
class PreparedInputs:
    """A request's inputs, checked and cast.

    Attributes:
        arrays: every model input by name, (B, *S_i), the differentiated one
            cast to ``precision``, float inputs held fixed cast likewise, the
            others to the model's dtype.
        wrt: the name of the differentiated input.
        precision: "float32" or "float64", the dtype of every result.
    """

    arrays: dict[str, np.ndarray]
    wrt: str
    precision: str

    @property
    def x(self) -> np.ndarray:
        """The differentiated input, (B, *S)."""
        return self.arrays[self.wrt]

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def event_shape(self) -> tuple[int, ...]:
        """S, the per-example shape of the differentiated input."""
        return self.x.shape[1:]

    @property
    def event_size(self) -> int:
        """D = prod(S)."""
        return math.prod(self.event_shape)


def resolve_precision(precision: str | None) -> str:
    """``None`` means "float32"; anything but "float32"/"float64" is refused."""
    if precision is None or precision == "":
        return "float32"
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {PRECISIONS} (or None), got {clipped(precision)}", field="precision")
    return precision


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


def input_path(key: str) -> str:
    """The field path of input ``key`` of ``x``: ``x[key]``, the key clipped."""
    return f"x[{clipped_path(key)}]"


def _named_arrays(model: Model, x: Any) -> dict[str, tuple[str, Any]]:
    """Each model input name -> (its field path, the caller's value)."""
    names = model.input_names
    if not isinstance(x, Mapping):
        if len(names) != 1:
            raise ShapeError(
                f"model {model.name!r} has {len(names)} inputs {list(names)}; pass x as a dict name -> array",
                field="x",
            )
        return {names[0]: (input_path(names[0]), x)}
    if len(names) == 1 and len(x) == 1:
        key, value = next(iter(x.items()))
        return {names[0]: (input_path(key), value)}
    unknown = sorted(set(x) - set(names))
    if unknown:
        raise UnknownInputError(
            f"model {model.name!r} has no input named {clipped(unknown[0])}"
            f"{f' (nor {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; its inputs are {list(names)}",
            field=input_path(unknown[0]),
        )
    missing = [n for n in names if n not in x]
    if missing:
        raise ShapeError(f"inputs {missing} of model {model.name!r} are missing; pass all of {list(names)}", field="x")
    return {name: (input_path(name), x[name]) for name in names}


def _checked_array(value: Any, info: TensorInfo, *, path: str, differentiated: bool, precision: str) -> np.ndarray:
    array = np.asarray(value)
    declared = np.dtype(info.dtype) if info.dtype != "bfloat16" else None
    wants_float = differentiated or declared is None or declared.kind == "f"
    if wants_float and not _is_float(array.dtype):
        role = "the differentiated input" if differentiated else "a floating-point input"
        raise DtypeError(
            f"input {info.name!r} is {role} and must be float16, bfloat16, float32 or float64, "
            f"got {array.dtype.name}; convert it with x.astype(np.float32)",
            field=path,
        )
    if not wants_float and array.dtype.kind not in "iub":
        raise DtypeError(f"input {info.name!r} must hold integers ({info.dtype}), got {array.dtype.name}", field=path)
    expected = ("B", *("?" if d is None else d for d in info.shape))
    if array.ndim != len(info.shape) + 1:
        raise ShapeError(
            f"input {info.name!r} must have rank {len(info.shape) + 1}, shape {expected}, got shape {array.shape}; "
            "the first dimension is the batch (use x[None] for one example)",
            field=path,
        )
    if array.shape[0] < 1 or any(d is not None and d != a for d, a in zip(info.shape, array.shape[1:])):
        raise ShapeError(f"input {info.name!r} must have shape {expected} with B >= 1, got {array.shape}", field=path)
    if any(a == 0 for a in array.shape[1:]):
        raise ShapeError(f"input {info.name!r} has an empty dimension in shape {array.shape}", field=path)
    return array.astype(precision if wants_float else info.dtype, copy=False)


def _check_range(array: np.ndarray, name: str, low: int, high: int) -> None:
    """Refuse ids outside [low, high): a lookup would clamp them under XLA (wrong numbers) or fail."""
    if array.dtype.kind not in "iu":
        return
    smallest, largest = int(array.min()), int(array.max())
    if smallest < low or largest >= high:
        bad = smallest if smallest < low else largest
        raise InvalidArgumentError(
            f"input {name!r} holds {bad}, outside [{low}, {high}): it indexes a lookup (an Embedding) of "
            f"{high - low} entries, so every value must be in that range",
            field=input_path(name),
            reason="INPUT_OUT_OF_RANGE",
            metadata={"value": bad, "low": low, "high": high},
        )


def prepare_inputs(model: Model, x: Any, wrt: str | None, precision: str) -> PreparedInputs:
    """Check ``x`` against the model's inputs and resolve ``wrt``.

    Raises:
        InvalidArgumentError: an integer input that indexes a lookup holds an
            id outside the lookup's range (``model.input_ranges``).
        ShapeError: wrong rank, shape, missing input, or unequal batch sizes.
        DtypeError: a non-float differentiated input.
        UnknownInputError: ``wrt`` or a key of ``x`` names no input.
    """
    names = model.input_names
    if wrt is None or wrt == "":
        if len(names) != 1:
            raise UnknownInputError(
                f"model {model.name!r} has inputs {list(names)}; say which to differentiate with wrt=", field="wrt"
            )
        wrt = names[0]
    elif wrt not in names:
        raise UnknownInputError(
            f"wrt={clipped(wrt)} names no input of model {model.name!r}; choose one of {list(names)}", field="wrt"
        )
    named = _named_arrays(model, x)
    arrays = {
        info.name: _checked_array(
            named[info.name][1], info, path=named[info.name][0], differentiated=info.name == wrt, precision=precision
        )
        for info in model.inputs
    }
    for name, (low, high) in model.input_ranges.items():
        _check_range(arrays[name], name, low, high)
    batches = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(batches.values())) != 1:
        raise ShapeError(f"every input needs the same batch size, got {batches}", field="x")
    return PreparedInputs(arrays=arrays, wrt=wrt, precision=precision)


def prepare_weights(output_weights: Any, batch: int, outputs: int, precision: str) -> np.ndarray:
    """``output_weights`` as a (B, K) array; ``None`` means all ones.

    Raises:
        OutputWeightsError: not of shape (K,) or (B, K), or not real numbers.
    """
    if output_weights is None:
        return np.ones((batch, outputs), dtype=precision)
    weights = np.asarray(output_weights)
    if weights.dtype.kind not in "fiu" and weights.dtype.name != "bfloat16":
        raise OutputWeightsError(
            f"output_weights must be real numbers, got dtype {weights.dtype.name}", field="output_weights"
        )
    if weights.shape == (outputs,):
        return np.broadcast_to(weights.astype(precision), (batch, outputs))
    if weights.shape == (batch, outputs):
        return weights.astype(precision, copy=False)
    raise OutputWeightsError(
        f"output_weights must have shape (K,) = ({outputs},) or (B, K) = ({batch}, {outputs}), where K is the "
        f"number of model outputs per example; got {weights.shape}",
        field="output_weights",
    )


def prepare_tangent(v: Any, inputs: PreparedInputs) -> np.ndarray:
    """The HVP direction ``v``, shape and dtype of the differentiated input.

    Raises:
        ShapeError: ``v`` does not have x's shape.
        DtypeError: ``v`` is not floating point.
    """
    tangent = np.asarray(v)
    if not _is_float(tangent.dtype):
        raise DtypeError(f"v must be floating point, got {tangent.dtype.name}", field="v")
    if tangent.shape != inputs.x.shape:
        raise ShapeError(
            f"v must have the shape of input {inputs.wrt!r}, {inputs.x.shape}, got {tangent.shape}", field="v"
        )
    return tangent.astype(inputs.precision, copy=False)


def check_result_size(model: Model, element_count: int, precision: str, what: str, advice: str) -> None:
    """Refuse a result over ``model.config.max_result_bytes`` before computing it.

    ``advice`` says what in the request to change (the message adds "or raise max_result_bytes").

    Raises:
        ResultTooLargeError: with the estimate, the limit and what to change.
    """
    estimate = element_count * np.dtype(precision).itemsize
    limit = model.config.max_result_bytes
    if estimate > limit:
        raise ResultTooLargeError(
            f"the {what} would take {estimate:,} bytes, over the limit of {limit:,} bytes; {advice}, "
            "or raise max_result_bytes",
            reason="RESULT_EXCEEDS_LIMIT",
            metadata={"result_bytes": estimate, "max_result_bytes": limit},
        )
