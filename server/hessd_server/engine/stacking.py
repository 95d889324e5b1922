"""Several checked requests of one kind as one compiled call: concatenated
along the batch axis, run once, split back per request.

Only requests with the same :func:`stack_key` run together, and only on a
model whose examples are independent (:func:`can_stack`), so each request's
rows come out as they would alone: bitwise when the stacked batch runs in
the same bucket as the request alone, to float32 rounding otherwise. Each
request keeps its own output weights (B_i, K) and, for ``hvp``, its own v rows.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from hessd.results import Evaluation

from .execution import PreparedCall, dtype_name, example_result_bytes, function_key, run_prepared
from .model import Model
from .validation import PreparedInputs

STACKABLE_KINDS = ("hessian", "gradient", "hvp")
"""Kinds that can share a compiled call; a full Hessian couples the examples of
its batch, so ``full_hessian`` always runs alone."""


def can_stack(model: Model, call: PreparedCall) -> bool:
    """Whether ``call`` may run in one compiled call with others of its :func:`stack_key`."""
    return bool(model.batch_independent) and call.kind in STACKABLE_KINDS


def stack_key(call: PreparedCall) -> Hashable:
    """What requests must share to run together: kind, ``wrt``, precision, the
    per-example shape and dtype of every input, and K."""
    inputs = call.inputs
    shapes = tuple((name, array.shape[1:], dtype_name(array.dtype)) for name, array in inputs.arrays.items())
    return (call.kind, inputs.wrt, inputs.precision, shapes, call.weights.shape[1])


def stack_limit(model: Model, call: PreparedCall) -> int:
    """The most examples that calls of ``call``'s :func:`stack_key` may hold together:
    at most ``max_batch_size``, and few enough that their results together fit
    in ``max_result_bytes``."""
    fitting = model.config.max_result_bytes // example_result_bytes(call.kind, call.inputs)
    return min(model.config.max_batch_size, fitting)


def run_stacked(model: Model, calls: Sequence[PreparedCall]) -> list[Evaluation | np.ndarray]:
    """Run ``calls`` (same :func:`stack_key`, :func:`can_stack`) as one compiled
    call and return each one's result, in order, as :func:`run_prepared` would.

    The stacked batch runs in the smallest bucket that holds it and is already
    compiled, so stacking compiles nothing new once a model is warm; if none
    is compiled, in the smallest bucket that holds it. A single call runs as
    it is, without a copy.
    """
    if len(calls) == 1:
        return [run_prepared(model, calls[0])]
    first = calls[0]
    arrays = {name: np.concatenate([c.inputs.arrays[name] for c in calls]) for name in first.inputs.arrays}
    inputs = PreparedInputs(arrays=arrays, wrt=first.inputs.wrt, precision=first.inputs.precision)
    tangent = None if first.tangent is None else np.concatenate([c.tangent for c in calls])
    weights = np.concatenate([c.weights for c in calls])
    stacked = PreparedCall(first.kind, inputs, weights, tangent)
    result = run_prepared(model, stacked, padded_batch=compiled_bucket(model, stacked))
    bounds = np.cumsum([c.batch for c in calls])[:-1]
    if isinstance(result, Evaluation):
        parts = zip(*(np.split(array, bounds) for array in result))
        return [Evaluation(*part) for part in parts]
    return list(np.split(result, bounds))


def compiled_bucket(model: Model, call: PreparedCall) -> int:
    """The smallest bucket holding ``call``'s batch whose function is compiled;
    the smallest bucket holding it when none is."""
    smallest = model.config.bucket_for(call.batch)
    bucket = smallest
    while bucket <= model.config.max_batch_size:
        if function_key(model, call.kind, call.inputs, call.weights.shape[1], bucket) in model.functions:
            return bucket
        bucket *= 2
    return smallest
