"""The library API: Hessians, gradients and Hessian-vector products of a model
with respect to its inputs, computed by compiled, bucketed functions.

Every function differentiates the scalar

    f = sum_b f_b,   f_b = sum_k w_k * y[b, k]

where y = model(x) is flattened per example to (B, K) and w is
``output_weights``: shape (K,) or (B, K), all ones by default (so f is
``reduce_sum(model(x))``). Weights give Lagrangian Hessians sum_k w_k d2 y_k.

NaN or infinite inputs are not refused: they are computed and propagate into
the results of the examples that hold them.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from hessd.errors import BatchDependenceError, ResultTooLargeError
from hessd.results import Evaluation

from . import compiled
from .compiled import FunctionKey
from .model import Model
from .model_loading import as_model
from .probes import is_batch_independent
from .validation import (
    PreparedInputs,
    check_result_size,
    prepare_inputs,
    prepare_tangent,
    prepare_weights,
    resolve_precision,
)

_log = logging.getLogger(__name__)

ModelLike = Model | keras.Model


def hessian(
    model: ModelLike,
    x: Any,
    *,
    full: bool = False,
    output_weights: Any = None,
    wrt: str | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """The Hessian of f with respect to input ``x`` (or ``x[wrt]``).

    Shape rule, for x of shape (B, *S):
      * ``full=False``: (B, *S, *S), the per-example blocks H_b = d2 f_b / dx_b dx_b.
        The model's examples must not influence each other (checked once per
        model); otherwise ``BatchDependenceError`` asks for ``full=True``.
      * ``full=True``: (B, *S, B, *S), every block, as ``tf.hessians`` returns it.

    dtype: float32, or float64 with ``precision="float64"`` (computed through
    a float64 copy of the model). A zero Hessian is returned as zeros.

    Args:
        model: a :class:`Model` from ``load_model``, or a Keras model.
        x: an array (B, *S); for a multi-input model a dict name -> array,
            with ``wrt`` naming the input to differentiate (others held fixed).
        full: every block instead of the per-example ones.
        output_weights: w, shape (K,) or (B, K); default all ones.
        wrt: the input to differentiate; needed only for multi-input models.
        precision: "float32" (default) or "float64".

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model("hessd_server.demo_model:build_demo_model")
    >>> hs.hessian(m, np.ones((3, 10), np.float32)).shape
    (3, 10, 10)
    >>> hs.hessian(m, np.ones((3, 10), np.float32), full=True).shape
    (3, 10, 3, 10)
    """
    m, inputs, weights = _prepare(model, x, output_weights, wrt, precision)
    _check_hessian_size(m, inputs, full, "Hessian")
    return _second_order(m, inputs, weights, full).hessian


def evaluate(
    model: ModelLike,
    x: Any,
    *,
    full: bool = False,
    output_weights: Any = None,
    wrt: str | None = None,
    precision: str | None = None,
) -> Evaluation:
    """Value, gradient and Hessian of f from one compiled call.

    Returns ``Evaluation(value, gradient, hessian)`` with value f_b of shape
    (B,), gradient (B, *S) and hessian as :func:`hessian` returns it for the
    same ``full``. Arguments and dtypes as for :func:`hessian`.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model("hessd_server.demo_model:build_demo_model")
    >>> [a.shape for a in hs.evaluate(m, np.ones((2, 10), np.float32))]
    [(2,), (2, 10), (2, 10, 10)]
    """
    m, inputs, weights = _prepare(model, x, output_weights, wrt, precision)
    _check_hessian_size(m, inputs, full, "evaluation", extra=inputs.batch * (1 + inputs.event_size))
    return _second_order(m, inputs, weights, full)


def gradient(
    model: ModelLike,
    x: Any,
    *,
    output_weights: Any = None,
    wrt: str | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """The gradient df/dx, shape (B, *S) like x; dtype as ``precision``.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model("hessd_server.demo_model:build_demo_model")
    >>> hs.gradient(m, np.ones((3, 10), np.float32)).shape
    (3, 10)
    """
    m, inputs, weights = _prepare(model, x, output_weights, wrt, precision)
    check_result_size(m, inputs.batch * inputs.event_size, inputs.precision, "gradient")
    return _run(m, "gradient", inputs, weights)


def hvp(
    model: ModelLike,
    x: Any,
    v: Any,
    *,
    output_weights: Any = None,
    wrt: str | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """The Hessian-vector product (d2 f / dx dx) v, shape (B, *S) like x and v.

    For a model whose examples are independent this is H_b v_b per example;
    for one that mixes examples it is the full product. Costs about two
    gradients, whatever the size of x.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model("hessd_server.demo_model:build_demo_model")
    >>> x = np.ones((3, 10), np.float32)
    >>> hs.hvp(m, x, x).shape
    (3, 10)
    """
    m, inputs, weights = _prepare(model, x, output_weights, wrt, precision)
    tangent = prepare_tangent(v, inputs)
    check_result_size(m, inputs.batch * inputs.event_size, inputs.precision, "Hessian-vector product")
    return _run(m, "hvp", inputs, weights, tangent)


def warm_model(model: Model, batch_sizes: tuple[int, ...]) -> None:
    """Compile a model's per-example functions for the buckets covering
    ``batch_sizes`` at float32; see :meth:`Model.warmup`."""
    unknown = [i.name for i in model.inputs if None in i.shape]
    if unknown:
        raise ValueError(f"cannot warm model {model.name!r}: inputs {unknown} have dimensions of unknown size")
    rng = np.random.default_rng(0)
    sizes = sorted({model.config.bucket_for(b) for b in batch_sizes})
    for size in sizes:
        x = {
            i.name: rng.standard_normal((size, *i.shape)).astype(np.float32)
            if i.dtype in ("float16", "bfloat16", "float32", "float64")
            else np.zeros((size, *i.shape), dtype=i.dtype)
            for i in model.inputs
        }
        wrt = next((name for name, array in x.items() if array.dtype.kind == "f"), None)
        if wrt is None:
            raise ValueError(f"cannot warm model {model.name!r}: it has no floating-point input to differentiate")
        gradient(model, x, wrt=wrt)
        hvp(model, x, x[wrt], wrt=wrt)
        try:
            evaluate(model, x, wrt=wrt)
        except (BatchDependenceError, ResultTooLargeError) as err:
            _log.info("model %s: per-example Hessian not warmed at batch %d: %s", model.name, size, err.message)


def _prepare(
    model: ModelLike, x: Any, output_weights: Any, wrt: str | None, precision: str | None
) -> tuple[Model, PreparedInputs, np.ndarray]:
    m = as_model(model)
    inputs = prepare_inputs(m, x, wrt, resolve_precision(precision))
    weights = prepare_weights(output_weights, inputs.batch, _output_size(m, inputs), inputs.precision)
    if m.batch_independent is None:
        with m.lock:
            if m.batch_independent is None:
                m.batch_independent = is_batch_independent(m.call_for("float32"), _as_float32(inputs), tf.float32)
                _log.info("model %s: batch independent: %s", m.name, m.batch_independent)
    return m, inputs, weights


def _as_float32(inputs: PreparedInputs) -> dict[str, np.ndarray]:
    return {n: a.astype(np.float32) if a.dtype.kind == "f" else a for n, a in inputs.arrays.items()}


def _output_size(model: Model, inputs: PreparedInputs) -> int:
    """K, the model's outputs per example, flattened; runs the model once on
    one example when an output shape depends on the input shape."""
    shapes = [o.shape for o in model.outputs]
    if shapes and all(None not in s for s in shapes):
        return sum(math.prod(s) for s in shapes)
    key = tuple((n, a.shape[1:]) for n, a in inputs.arrays.items())
    with model.lock:
        if key not in model.output_sizes:
            one = {n: tf.constant(a[:1]) for n, a in _as_float32(inputs).items()}
            outputs = tf.nest.flatten(model.call_for("float32")(one))
            model.output_sizes[key] = sum(math.prod(t.shape[1:]) for t in outputs)
        return model.output_sizes[key]


def _check_hessian_size(model: Model, inputs: PreparedInputs, full: bool, what: str, extra: int = 0) -> None:
    blocks = inputs.batch * inputs.event_size**2
    count = blocks * inputs.batch if full else blocks
    check_result_size(model, count + extra, inputs.precision, f"{'full ' if full else 'per-example '}{what}")


def _second_order(model: Model, inputs: PreparedInputs, weights: np.ndarray, full: bool) -> Evaluation:
    if not full and not model.batch_independent:
        raise BatchDependenceError(
            f"model {model.name!r} mixes examples within a batch (an example's outputs depend on other "
            "examples' inputs), so it has no per-example Hessian blocks; ask for full=True",
            field="full",
        )
    value, grad, blocks = _run(model, "full_hessian" if full else "hessian", inputs, weights)
    return Evaluation(value=value, gradient=grad, hessian=blocks)


def _run(model: Model, kind: str, inputs: PreparedInputs, weights: np.ndarray, *tangent: np.ndarray) -> Any:
    """Pad to the bucket (batch-independent models only), run, and slice back."""
    batch = inputs.batch
    padded = model.config.bucket_for(batch) if model.batch_independent else batch
    key = FunctionKey(
        kind=kind,
        precision=inputs.precision,
        batch=padded,
        wrt=inputs.wrt,
        inputs=tuple((n, a.shape[1:], a.dtype.name) for n, a in inputs.arrays.items()),
        outputs=weights.shape[1],
    )
    fixed = {n: _pad(a, padded, edge=True) for n, a in inputs.arrays.items() if n != inputs.wrt}
    args = (
        _pad(inputs.x, padded, edge=True),
        fixed,
        _pad(weights, padded, edge=False),
        *(_pad(t, padded, edge=False) for t in tangent),
    )
    result = compiled.run(model, key, args)
    return tf.nest.map_structure(lambda t: _unpad(t.numpy(), batch, kind, inputs), result)


def _pad(array: np.ndarray, size: int, *, edge: bool) -> np.ndarray:
    """Rows up to ``size``: copies of the last example (valid inputs), or zeros
    (weights and tangents, so padded rows contribute nothing)."""
    extra = size - array.shape[0]
    if extra == 0:
        return array
    widths = [(0, extra)] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, widths, mode="edge") if edge else np.pad(array, widths)


def _unpad(result: np.ndarray, batch: int, kind: str, inputs: PreparedInputs) -> np.ndarray:
    if result.shape[0] == batch:
        return result
    if kind == "full_hessian" and result.ndim == 2 + 2 * len(inputs.event_shape):
        second_batch_axis = 1 + len(inputs.event_shape)
        return np.take(result[:batch], np.arange(batch), axis=second_batch_axis)
    return result[:batch]
