"""Running one derivative request on a :class:`Model`: validation, the
batch-independence probe, padding to the bucket, the compiled call, slicing back.

A request is checked first (``prepare_*``, which raise ``hessd.errors`` types
and compute nothing), then run (:func:`run_prepared`). The two steps are apart
so that a server can check each request before it queues it, and run checked
requests of the same kind together (:mod:`.stacking`).

Every function here takes a loaded :class:`Model`; :mod:`.api` accepts Keras
models too and documents the contract.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tensorflow as tf

from hessd.errors import BatchDependenceError
from hessd.results import Evaluation

from . import compiled
from .cancellation import check_cancelled
from .function_key import FunctionKey
from .model import Model
from .padding import pad_rows
from .probes import is_batch_independent
from .validation import (
    PreparedInputs,
    Wrt,
    check_result_size,
    prepare_inputs,
    prepare_tangent,
    prepare_weights,
    resolve_precision,
)

_log = logging.getLogger(__name__)

SECOND_ORDER_KINDS = ("hessian", "full_hessian")
SINGLE_OUTPUT_KINDS = ("gradient", "hvp")
"""Kinds whose compiled function returns value (B,), gradient (B, *S) and Hessian."""


@dataclass(frozen=True)
class PreparedCall:
    """One request, checked against its model and ready to run.

    Attributes:
        kind: the compiled function it needs: "hessian" (per-example blocks),
            "full_hessian", "gradient" or "hvp".
        inputs: the inputs, checked and cast, each (B, *S_i).
        weights: the output weights, (B, K) of the precision's dtype.
        tangent: ``hvp``'s v, (B, *S) like the differentiated input; else None.
    """

    kind: str
    inputs: PreparedInputs
    weights: np.ndarray
    tangent: np.ndarray | None = None

    @property
    def batch(self) -> int:
        """B, the request's examples."""
        return self.inputs.batch


def prepare_second_order(
    m: Model,
    x: Any,
    *,
    full: bool,
    output_weights: Any,
    wrt: Wrt,
    precision: str | None,
    evaluation: bool,
) -> PreparedCall:
    """Check a Hessian (``evaluation=False``: the size of the Hessian alone is
    checked) or evaluate request (the size of value, gradient and Hessian).

    Raises:
        BatchDependenceError: per-example blocks of a model that mixes examples.
        ResultTooLargeError: the result would exceed ``max_result_bytes``.
        InvalidArgumentError: (subclasses) a bad input, weight or option.
    """
    inputs, weights = prepare(m, x, output_weights, wrt, precision)
    extra = inputs.batch * (1 + inputs.event_size) if evaluation else 0
    check_hessian_size(m, inputs, full, "evaluation" if evaluation else "Hessian", extra=extra)
    if not full and not m.batch_independent:
        raise BatchDependenceError(
            f"model {m.name!r} mixes examples within a batch (an example's outputs depend on other "
            "examples' inputs), so it has no per-example Hessian blocks; ask for full=True",
            field="full",
        )
    return PreparedCall("full_hessian" if full else "hessian", inputs, weights)


def prepare_gradient(m: Model, x: Any, *, output_weights: Any, wrt: Wrt, precision: str | None) -> PreparedCall:
    """Check a gradient request; raises as :func:`prepare_second_order`."""
    inputs, weights = prepare(m, x, output_weights, wrt, precision)
    check_result_size(m, inputs.batch * inputs.event_size, inputs.precision, "gradient", "send a smaller batch")
    return PreparedCall("gradient", inputs, weights)


def prepare_hvp(
    m: Model, x: Any, v: Any, *, output_weights: Any, wrt: Wrt, precision: str | None
) -> PreparedCall:
    """Check a Hessian-vector product request; raises as :func:`prepare_second_order`."""
    inputs, weights = prepare(m, x, output_weights, wrt, precision)
    tangent = prepare_tangent(v, inputs)
    check_result_size(
        m, inputs.batch * inputs.event_size, inputs.precision, "Hessian-vector product", "send a smaller batch"
    )
    return PreparedCall("hvp", inputs, weights, tangent)


def run_prepared(m: Model, call: PreparedCall, padded_batch: int | None = None) -> Evaluation | np.ndarray:
    """Compute a checked request: an ``Evaluation`` for the second-order kinds,
    the (B, *S) array for "gradient" and "hvp".

    ``padded_batch`` (batch-independent models only) runs the request padded
    to that many examples instead of the smallest bucket that holds it.

    The arrays are read-only views of the compiled function's output buffers,
    not copies: the server writes them straight into replies or shared memory.
    """
    tangent = () if call.tangent is None else (call.tangent,)
    result = run(m, call.kind, call.inputs, call.weights, *tangent, padded_batch=padded_batch)
    return Evaluation(*result) if call.kind in SECOND_ORDER_KINDS else result


def _owned(result: Evaluation | np.ndarray) -> Any:
    """``result`` as writable arrays of the caller's own (the engine's are read-only views)."""
    if isinstance(result, Evaluation):
        return Evaluation(*(np.array(array) for array in result))
    return np.array(result)


def hessian_of(
    m: Model, x: Any, *, full: bool, output_weights: Any, wrt: Wrt, precision: str | None
) -> Evaluation:
    """Value, gradient and Hessian of ``m`` at ``x``, with the result size checked for the Hessian alone."""
    options = {"output_weights": output_weights, "wrt": wrt, "precision": precision}
    return _owned(run_prepared(m, prepare_second_order(m, x, full=full, evaluation=False, **options)))


def evaluation_of(
    m: Model, x: Any, *, full: bool, output_weights: Any, wrt: Wrt, precision: str | None
) -> Evaluation:
    """Value, gradient and Hessian of ``m`` at ``x``, with the size of all three checked."""
    options = {"output_weights": output_weights, "wrt": wrt, "precision": precision}
    return _owned(run_prepared(m, prepare_second_order(m, x, full=full, evaluation=True, **options)))


def gradient_of(m: Model, x: Any, *, output_weights: Any, wrt: Wrt, precision: str | None) -> np.ndarray:
    """df/dx of ``m`` at ``x``, (B, *S)."""
    return _owned(run_prepared(m, prepare_gradient(m, x, output_weights=output_weights, wrt=wrt, precision=precision)))


def hvp_of(
    m: Model, x: Any, v: Any, *, output_weights: Any, wrt: Wrt, precision: str | None
) -> np.ndarray:
    """(d2f/dx dx) v of ``m`` at ``x``, (B, *S)."""
    return _owned(run_prepared(m, prepare_hvp(m, x, v, output_weights=output_weights, wrt=wrt, precision=precision)))


def prepare(
    m: Model, x: Any, output_weights: Any, wrt: Wrt, precision: str | None
) -> tuple[PreparedInputs, np.ndarray]:
    """Check a request against ``m`` and probe batch independence on first use.

    Returns the prepared inputs and the output weights as (B, K).
    """
    inputs = prepare_inputs(m, x, wrt, resolve_precision(precision))
    weights = prepare_weights(output_weights, inputs.batch, _output_size(m, inputs), inputs.precision)
    if m.batch_independent is None:
        with m.probe_lock:
            if m.batch_independent is None:
                check_cancelled()
                independent = is_batch_independent(
                    m.call_for("float32"), _as_float32(inputs), tf.float32, ranges=m.input_ranges
                )
                with m.lock:
                    m.batch_independent = independent
                _log.info("model %s: batch independent: %s", m.name, independent)
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
    known = model.output_sizes.get(key)
    if known is not None:
        return known
    one = {n: tf.constant(a[:1]) for n, a in _as_float32(inputs).items()}
    outputs = tf.nest.flatten(model.call_for("float32")(one))
    with model.lock:
        return model.output_sizes.setdefault(key, sum(math.prod(t.shape[1:]) for t in outputs))


def check_hessian_size(model: Model, inputs: PreparedInputs, full: bool, what: str, extra: int = 0) -> None:
    blocks = inputs.batch * inputs.event_size**2
    count = blocks * inputs.batch if full else blocks
    advice = "send a smaller batch"
    if full:
        advice += ", or ask for per-example blocks instead of full=True"
    check_result_size(model, count + extra, inputs.precision, f"{'full ' if full else 'per-example '}{what}", advice)


@functools.cache
def dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, remembered: numpy computes it in Python on every read, and the
    keys of every engine call carry it."""
    return dtype.name


def function_key(
    model: Model,
    kind: str,
    inputs: PreparedInputs,
    outputs: int,
    batch: int,
    options: tuple[tuple[str, Any], ...] = (),
) -> FunctionKey:
    """The key of the compiled function running ``inputs`` padded to ``batch`` examples."""
    return FunctionKey(
        kind=kind,
        precision=inputs.precision,
        batch=batch,
        wrt=inputs.wrt,
        inputs=tuple((n, a.shape[1:], dtype_name(a.dtype)) for n, a in inputs.arrays.items()),
        outputs=outputs,
        options=options,
    )


def run(
    model: Model,
    kind: str,
    inputs: PreparedInputs,
    weights: np.ndarray,
    *tangent: np.ndarray,
    padded_batch: int | None = None,
    options: tuple[tuple[str, Any], ...] = (),
    constants: tuple[np.ndarray, ...] = (),
) -> Any:
    """Run ``kind`` on the whole batch: the result tuple of the multi-output
    kinds, the one (B, *S) array of "gradient" and "hvp".

    ``tangent`` arrays have a batch dimension and are padded with zeros;
    ``constants`` (such as a seed) are passed as they are. ``options`` are
    part of the compiled function's key.

    A batch-independent model's batch above ``max_batch_size`` runs as slices
    of that size for the Hessian, gradient and HVP kinds (``padded_batch`` is
    then ignored), so it compiles nothing new; a full Hessian is put together
    block-diagonally, which is exact for such a model. Curvature kinds run
    whole, so a seeded estimate does not depend on the slicing.
    """
    step = model.config.max_batch_size
    sliceable = kind in SECOND_ORDER_KINDS or kind in SINGLE_OUTPUT_KINDS
    if not (sliceable and model.batch_independent and inputs.batch > step):
        return _run_bucket(
            model, kind, inputs, weights, *tangent, padded_batch=padded_batch, options=options, constants=constants
        )
    parts = [
        _run_bucket(
            model,
            kind,
            replace(inputs, arrays={n: a[start : start + step] for n, a in inputs.arrays.items()}),
            weights[start : start + step],
            *(t[start : start + step] for t in tangent),
        )
        for start in range(0, inputs.batch, step)
    ]
    if kind not in SECOND_ORDER_KINDS:
        return np.concatenate(parts)
    value, grad, hessian = (list(results) for results in zip(*parts))
    if kind == "full_hessian":
        hessian = [_block_diagonal(hessian, len(inputs.event_shape))]
    return tuple(np.concatenate(results) for results in (value, grad, hessian))


def _block_diagonal(blocks: list[np.ndarray], event_rank: int) -> np.ndarray:
    """Full Hessians (b_i, *S, b_i, *S) of independent slices -> (B, *S, B, *S), zero off the slices."""
    batch = sum(block.shape[0] for block in blocks)
    event_shape = blocks[0].shape[1 : 1 + event_rank]
    full = np.zeros((batch, *event_shape, batch, *event_shape), dtype=blocks[0].dtype)
    start = 0
    for block in blocks:
        rows = slice(start, start + block.shape[0])
        full[(rows, *[slice(None)] * event_rank, rows)] = block
        start += block.shape[0]
    return full


def _run_bucket(
    model: Model,
    kind: str,
    inputs: PreparedInputs,
    weights: np.ndarray,
    *tangent: np.ndarray,
    padded_batch: int | None = None,
    options: tuple[tuple[str, Any], ...] = (),
    constants: tuple[np.ndarray, ...] = (),
) -> Any:
    """Pad (see :func:`_padded_batch`), run, and slice back."""
    batch = inputs.batch
    padded = _padded_batch(model, kind, inputs, padded_batch)
    key = function_key(model, kind, inputs, weights.shape[1], padded, options)
    fixed = {n: pad_rows(a, padded, edge=True) for n, a in inputs.arrays.items() if n not in inputs.wrt}
    args = (
        pad_rows(inputs.x, padded, edge=True),
        fixed,
        pad_rows(weights, padded, edge=False),
        *(pad_rows(t, padded, edge=False) for t in tangent),
        *constants,
    )
    results = tuple(_unpad(np.asarray(t), batch) for t in compiled.run(model, key, args))
    return results[0] if kind in SINGLE_OUTPUT_KINDS else results


def bucket_batch(model: Model, batch: int) -> int:
    """The batch size a request of ``batch`` examples is bucketed to: its
    bucket, or ``batch`` itself for a model that mixes examples."""
    return model.config.bucket_for(batch) if model.batch_independent else batch


def _padded_batch(model: Model, kind: str, inputs: PreparedInputs, requested: int | None) -> int:
    """The batch size ``kind`` runs at: ``requested`` or B's bucket, or B itself.

    B itself for a model that mixes examples, for ``full_hessian`` (a full
    Hessian grows with the square of the batch: it runs at exactly the B its
    limit was checked for), and when the padded results (value, gradient and
    blocks for "hessian") would exceed ``max_result_bytes``; so what is
    computed never exceeds the limit because of padding.
    """
    batch = inputs.batch
    if not model.batch_independent or kind == "full_hessian":
        return batch
    padded = requested or model.config.bucket_for(batch)
    fits = padded * example_result_bytes(kind, inputs) <= model.config.max_result_bytes
    return padded if fits else batch


def example_result_bytes(kind: str, inputs: PreparedInputs) -> int:
    """Bytes of one example's result of a per-example ``kind``: value, gradient
    and Hessian block for "hessian"; the (*S) row for "gradient" and "hvp"."""
    dim = inputs.event_size
    per_example = 1 + dim + dim * dim if kind == "hessian" else dim
    return per_example * np.dtype(inputs.precision).itemsize


def _unpad(result: np.ndarray, batch: int) -> np.ndarray:
    return result if result.shape[0] == batch else result[:batch]
