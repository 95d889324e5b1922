"""The batch-independence probe: do a model's examples influence each other?"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .derivatives import flatten_outputs
from .model import ModelCall

_PROBE_BATCH = 3


def _probe_batch(example: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Example 0 is ``example``; the others replace its float inputs with noise."""
    batch = {}
    for name, row in example.items():
        rows = np.repeat(row, _PROBE_BATCH, axis=0)
        if rows.dtype.kind == "f" or rows.dtype.name == "bfloat16":
            rows[1:] = rng.standard_normal(rows[1:].shape).astype(rows.dtype)
        batch[name] = rows
    return batch


def is_batch_independent(call: ModelCall, arrays: dict[str, np.ndarray], dtype: tf.DType) -> bool:
    """True when example 0's outputs depend on example 0's inputs alone.

    Uses the first example of ``arrays`` (name -> (B, *S_i)). Three checks
    must all pass: its outputs are the same alone and inside two batches whose
    other examples differ, and the gradient of its outputs with respect to the
    other examples' float inputs is exactly zero. A model that normalizes over
    the batch, or otherwise mixes examples, fails them.
    """
    rng = np.random.default_rng(0)
    example = {name: a[:1] for name, a in arrays.items()}
    first, second = _probe_batch(example, rng), _probe_batch(example, rng)
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
