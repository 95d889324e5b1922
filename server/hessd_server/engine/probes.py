"""The batch-independence probe: do a model's examples influence each other?"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from .derivatives import flatten_outputs
from .model import ModelCall

_PROBE_BATCH = 3


def _probe_batch(
    arrays: dict[str, np.ndarray], ranges: Mapping[str, tuple[int, int]], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Example 0 is the first example of ``arrays``; the others replace its inputs:
    float inputs with noise, integer inputs with other ids (see :func:`_other_ids`)."""
    batch = {}
    for name, array in arrays.items():
        rows = np.repeat(array[:1], _PROBE_BATCH, axis=0)
        if rows.dtype.kind == "f" or rows.dtype.name == "bfloat16":
            rows[1:] = rng.standard_normal(rows[1:].shape).astype(rows.dtype)
        elif rows.dtype.kind in "iu":
            rows[1:] = _other_ids(array, ranges.get(name), rng, rows[1:].shape).astype(rows.dtype)
        batch[name] = rows
    return batch


def _other_ids(
    array: np.ndarray, valid: tuple[int, int] | None, rng: np.random.Generator, shape: tuple[int, ...]
) -> np.ndarray:
    """Ids for the probe's other examples: from the lookup's range [low, high) if known, else from the
    values the request holds, preferring those example 0 does not."""
    if valid is not None:
        return rng.integers(valid[0], valid[1], shape)
    seen = np.unique(array)
    others = np.setdiff1d(seen, array[:1])
    return rng.choice(others if others.size else seen, shape)


def is_batch_independent(
    call: ModelCall,
    arrays: dict[str, np.ndarray],
    dtype: tf.DType,
    *,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> bool:
    """True when example 0's outputs depend on example 0's inputs alone.

    Uses the first example of ``arrays`` (name -> (B, *S_i)). Three checks
    must all pass: its outputs are the same alone and inside two batches whose
    other examples differ (in float and integer inputs alike), and the
    gradient of its outputs with respect to the other examples' float inputs
    is exactly zero. A model that normalizes over the batch, or otherwise
    mixes examples, fails them. Integer inputs vary within ``ranges`` (name ->
    [low, high)) where given, else among the values ``arrays`` holds, so an
    integer input whose request holds one value only cannot show mixing.
    """
    rng = np.random.default_rng(0)
    ranges = ranges or {}
    example = {name: a[:1] for name, a in arrays.items()}
    first, second = _probe_batch(arrays, ranges, rng), _probe_batch(arrays, ranges, rng)
    tensors = {name: tf.constant(a) for name, a in first.items()}
    watched = [t for t in tensors.values() if t.dtype.is_floating]
    with tf.GradientTape() as tape:
        tape.watch(watched)
        outputs = flatten_outputs(call(tensors), dtype)
        target = tf.reduce_sum(outputs[0])
    grads = tape.gradient(target, watched, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if any(np.any(g.numpy()[1:] != 0) for g in grads):
        return False
    alone = flatten_outputs(call({n: tf.constant(a) for n, a in example.items()}), dtype).numpy()[0]
    beside = flatten_outputs(call({n: tf.constant(a) for n, a in second.items()}), dtype).numpy()[0]
    reference = outputs.numpy()[0]
    return bool(
        np.allclose(reference, alone, rtol=1e-5, atol=1e-6, equal_nan=True)
        and np.allclose(reference, beside, rtol=1e-5, atol=1e-6, equal_nan=True)
    )
