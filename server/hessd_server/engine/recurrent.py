"""Recurrent layers traced without a loop: a Keras RNN layer (LSTM, GRU,
SimpleRNN, ``RNN(cell)``) over a short sequence of known length is set to
``unroll=True`` when its model is loaded.

A recurrent layer that is not unrolled traces to a ``tf.while_loop``, which
pfor cannot vectorize inside ``batch_jacobian``; its per-example Hessian then
falls back to the tiled strategy, which runs the model on D copies of the
batch. Unrolled, the steps are straight-line code (the program JAX traces from
a Python loop), pfor applies, and the per-example Hessian of the benchmark
LSTM takes about 0.4 of the tiled strategy's time (``docs/design/kernel.md``,
recurrent models). The layer computes the same function either way; only the
program differs, and it grows with the steps, hence :data:`MAX_UNROLLED_STEPS`.
"""

from __future__ import annotations

import logging

import keras

_log = logging.getLogger(__name__)

MAX_UNROLLED_STEPS = 16
"""Sequences up to this many steps are unrolled; longer ones (or of unknown
length) keep the loop, since an unrolled program's size and compile time grow
with the steps."""


def unroll_short_recurrences(model: keras.Model) -> tuple[str, ...]:
    """Set ``unroll=True`` on every recurrent layer of ``model`` (nested ones
    included) whose input sequence has a known length of at most
    :data:`MAX_UNROLLED_STEPS`; the names of the layers changed."""
    changed = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.RNN) and not layer.unroll and _steps(layer) is not None:
            layer.unroll = True
            changed.append(layer.name)
    if changed:
        _log.info("model %s: recurrent layers %s unrolled (at most %d steps)", model.name, ", ".join(changed), MAX_UNROLLED_STEPS)
    return tuple(changed)


def _steps(layer: keras.layers.RNN) -> int | None:
    """The layer's sequence length when it is known and short enough to unroll, else None."""
    try:
        steps = layer.input.shape[1]
    except (AttributeError, ValueError, IndexError, TypeError):
        return None
    return steps if isinstance(steps, int) and steps <= MAX_UNROLLED_STEPS else None
