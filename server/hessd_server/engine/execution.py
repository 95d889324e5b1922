"""Running one derivative request on a :class:`Model`: validation, the
batch-independence probe, padding to the bucket, the compiled call, slicing back.

Every function here takes a loaded :class:`Model`; :mod:`.api` accepts Keras
models too and documents the contract.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import tensorflow as tf

from hessd.errors import BatchDependenceError
from hessd.results import Evaluation

from . import compiled
from .function_key import FunctionKey
from .model import Model
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


def hessian_of(
    m: Model, x: Any, *, full: bool, output_weights: Any, wrt: str | None, precision: str | None
) -> Evaluation:
    """Value, gradient and Hessian of ``m`` at ``x``, with the result size checked for the Hessian alone."""
    inputs, weights = prepare(m, x, output_weights, wrt, precision)
    check_hessian_size(m, inputs, full, "Hessian")
    return second_order(m, inputs, weights, full)


def evaluation_of(
    m: Model, x: Any, *, full: bool, output_weights: Any, wrt: str | None, precision: str | None
) -> Evaluation:
    """Value, gradient and Hessian of ``m`` at ``x``, with the size of all three checked."""
    inputs, weights = prepare(m, x, output_weights, wrt, precision)
    check_hessian_size(m, inputs, full, "evaluation", extra=inputs.batch * (1 + inputs.event_size))
    return second_order(m, inputs, weights, full)


def gradient_of(m: Model, x: Any, *, output_weights: Any, wrt: str | None, precision: str | None) -> np.ndarray:
    """df/dx of ``m`` at ``x``, (B, *S)."""
    inputs, weights = prepare(m, x, output_weights, wrt, precision)
    check_result_size(m, inputs.batch * inputs.event_size, inputs.precision, "gradient")
    return run(m, "gradient", inputs, weights)


def hvp_of(
    m: Model, x: Any, v: Any, *, output_weights: Any, wrt: str | None, precision: str | None
) -> np.ndarray:
    """(d2f/dx dx) v of ``m`` at ``x``, (B, *S)."""
    inputs, weights = prepare(m, x, output_weights, wrt, precision)
    tangent = prepare_tangent(v, inputs)
    check_result_size(m, inputs.batch * inputs.event_size, inputs.precision, "Hessian-vector product")
    return run(m, "hvp", inputs, weights, tangent)


def prepare(
    m: Model, x: Any, output_weights: Any, wrt: str | None, precision: str | None
) -> tuple[PreparedInputs, np.ndarray]:
    """Check a request against ``m`` and probe batch independence on first use.

    Returns the prepared inputs and the output weights as (B, K).
    """
    inputs = prepare_inputs(m, x, wrt, resolve_precision(precision))
    weights = prepare_weights(output_weights, inputs.batch, _output_size(m, inputs), inputs.precision)
    if m.batch_independent is None:
        with m.lock:
            if m.batch_independent is None:
                m.batch_independent = is_batch_independent(m.call_for("float32"), _as_float32(inputs), tf.float32)
                _log.info("model %s: batch independent: %s", m.name, m.batch_independent)
    return inputs, weights


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


def check_hessian_size(model: Model, inputs: PreparedInputs, full: bool, what: str, extra: int = 0) -> None:
    blocks = inputs.batch * inputs.event_size**2
    count = blocks * inputs.batch if full else blocks
    check_result_size(model, count + extra, inputs.precision, f"{'full ' if full else 'per-example '}{what}")


def second_order(model: Model, inputs: PreparedInputs, weights: np.ndarray, full: bool) -> Evaluation:
    if not full and not model.batch_independent:
        raise BatchDependenceError(
            f"model {model.name!r} mixes examples within a batch (an example's outputs depend on other "
            "examples' inputs), so it has no per-example Hessian blocks; ask for full=True",
            field="full",
        )
    value, grad, blocks = run(model, "full_hessian" if full else "hessian", inputs, weights)
    return Evaluation(value=value, gradient=grad, hessian=blocks)


def run(model: Model, kind: str, inputs: PreparedInputs, weights: np.ndarray, *tangent: np.ndarray) -> Any:
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
