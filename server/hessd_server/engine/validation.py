"""Up-front checks of a request, before anything is traced or computed.

Every failure raises a ``hessd.errors`` type whose message says what to fix
and whose ``field`` is a path into the request: ``x`` for the inputs as a
whole, ``x[key]`` for one input (``key`` as the caller keyed it; the model's
input name when ``x`` was one array), ``wrt``, ``output_weights``, ``v`` or
``precision``. Caller-supplied strings are quoted clipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any, TypeAlias

import numpy as np

from hessd.blocks import join_vector
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


Wrt: TypeAlias = "str | Sequence[str] | None"
"""``wrt``: the input to differentiate, or several (differentiated as one
concatenated vector, see :mod:`hessd.blocks`); ``None`` for a single-input model."""


@dataclass(frozen=True)
class PreparedInputs:
    """A request's inputs, checked and cast.

    Attributes:
        arrays: every model input by name, (B, *S_i), the differentiated ones
            cast to ``precision``, float inputs held fixed cast likewise, the
            others to the model's dtype.
        wrt: the names of the differentiated inputs, in the caller's order.
        precision: "float32" or "float64", the dtype of every result.
    """

    arrays: dict[str, np.ndarray]
    wrt: tuple[str, ...]
    precision: str

    @cached_property
    def x(self) -> np.ndarray:
        """The differentiated vector: the one input (B, *S) as it is, or several
        concatenated, each flattened per example, as (B, N) with N = sum_i prod(S_i)."""
        if len(self.wrt) == 1:
            return self.arrays[self.wrt[0]]
        return np.concatenate([self.arrays[n].reshape(self.batch, -1) for n in self.wrt], axis=1)

    @property
    def batch(self) -> int:
        return self.arrays[self.wrt[0]].shape[0]

    @property
    def event_shape(self) -> tuple[int, ...]:
        """S, the per-example shape of the differentiated vector (``(N,)`` for several inputs)."""
        return self.x.shape[1:]

    @property
    def event_size(self) -> int:
        """D = prod(S)."""
        return math.prod(self.event_shape)

    @property
    def wrt_text(self) -> str:
        """The differentiated input(s) in words, for messages."""
        if len(self.wrt) == 1:
            return f"input {self.wrt[0]!r}"
        return f"inputs {list(self.wrt)} (concatenated)"


def resolve_precision(precision: str | None) -> str:
    """``None`` means "float32"; anything but "float32"/"float64" is refused."""
    if precision is None or precision == "":
        return "float32"
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {PRECISIONS} (or None), got {clipped(precision)}", field="precision")
    return precision


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


LONE_INPUT_KEY = ""
"""The key under which a single-input model also takes its input: what the SDK
sends for a lone array, whose input name it does not know."""


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
    if len(names) == 1 and len(x) == 1 and LONE_INPUT_KEY in x:
        return {names[0]: (input_path(names[0]), x[LONE_INPUT_KEY])}
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


@cache
def _declared_dtype(name: str) -> np.dtype | None:
    """The numpy dtype an input declares by name; ``None`` for bfloat16 (a float that
    numpy knows only through ml_dtypes). Remembered: every request's inputs are checked
    against it."""
    return None if name == "bfloat16" else np.dtype(name)


def _checked_array(value: Any, info: TensorInfo, *, path: str, differentiated: bool, precision: str) -> np.ndarray:
    array = np.asarray(value)
    declared = _declared_dtype(info.dtype)
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


def resolve_wrt(model: Model, wrt: Wrt) -> tuple[str, ...]:
    """``wrt`` as a tuple of the model's input names: one name, or several in the
    caller's order; ``None``, ``""`` or an empty sequence means the only input.

    Raises:
        UnknownInputError: a name that is no input, or no name for a multi-input model.
        InvalidArgumentError: a name given twice, or a name that is not a string.
        DtypeError: a named input that the model declares as integers.
    """
    names = model.input_names
    wanted = () if wrt is None or wrt == "" else (wrt,) if isinstance(wrt, str) else tuple(wrt)
    if not wanted:
        if len(names) != 1:
            raise UnknownInputError(
                f"model {model.name!r} has inputs {list(names)}; say which to differentiate with wrt= "
                "(one name, or a list of names to differentiate them together)",
                field="wrt",
            )
        return names
    for name in wanted:
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"wrt must hold input names (strings), got {clipped(repr(name))}", field="wrt"
            )
        if name not in names:
            raise UnknownInputError(
                f"wrt={clipped(name)} names no input of model {model.name!r}; choose one of {list(names)}",
                field="wrt",
            )
    repeated = sorted({name for name in wanted if wanted.count(name) > 1})
    if repeated:
        raise InvalidArgumentError(f"wrt names input {repeated[0]!r} more than once; name each input once", field="wrt")
    declared = {info.name: info.dtype for info in model.inputs}
    for name in wanted:
        if not (declared[name].startswith("float") or declared[name] == "bfloat16"):
            raise DtypeError(
                f"input {name!r} holds {declared[name]} values, which cannot be differentiated; "
                "name only floating-point inputs in wrt",
                field="wrt",
            )
    return wanted


def prepare_inputs(model: Model, x: Any, wrt: Wrt, precision: str) -> PreparedInputs:
    """Check ``x`` against the model's inputs and resolve ``wrt`` (see :func:`resolve_wrt`).

    Raises:
        InvalidArgumentError: an integer input that indexes a lookup holds an
            id outside the lookup's range (``model.input_ranges``); a bad ``wrt``.
        ShapeError: wrong rank, shape, missing input, or unequal batch sizes.
        DtypeError: a non-float differentiated input.
        UnknownInputError: ``wrt`` or a key of ``x`` names no input.
    """
    differentiated = resolve_wrt(model, wrt)
    named = _named_arrays(model, x)
    arrays = {
        info.name: _checked_array(
            named[info.name][1],
            info,
            path=named[info.name][0],
            differentiated=info.name in differentiated,
            precision=precision,
        )
        for info in model.inputs
    }
    for name, (low, high) in model.input_ranges.items():
        _check_range(arrays[name], name, low, high)
    batches = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(batches.values())) != 1:
        raise ShapeError(f"every input needs the same batch size, got {batches}", field="x")
    return PreparedInputs(arrays=arrays, wrt=differentiated, precision=precision)


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
    """The HVP direction ``v``, shape and dtype of the differentiated vector:
    (B, *S) for one input; (B, N) for several, or their blocks by name
    (joined by :func:`hessd.blocks.join_vector`).

    Raises:
        ShapeError: ``v`` does not have x's shape.
        DtypeError: ``v`` is not floating point.
    """
    if isinstance(v, Mapping) and len(inputs.wrt) > 1:
        v = join_vector(v, {name: inputs.arrays[name].shape[1:] for name in inputs.wrt})
    tangent = np.asarray(v)
    if not _is_float(tangent.dtype):
        raise DtypeError(f"v must be floating point, got {tangent.dtype.name}", field="v")
    if tangent.shape != inputs.x.shape:
        raise ShapeError(
            f"v must have the shape of {inputs.wrt_text}, {inputs.x.shape}, got {tangent.shape}", field="v"
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
