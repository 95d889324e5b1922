"""The ids an integer input may hold when it indexes a lookup table (an ``Embedding``).

Out-of-range ids would be clamped under XLA (silently wrong numbers) and fail in
graph mode, so requests are checked against these ranges before any work
(``Model.input_ranges``: name -> [low, high)).

A Keras model shows its lookups: an ``Embedding`` fed straight by an input.
A SavedModel shows only a function, so each integer input is probed once at
load: called (outside XLA) with that input at its dtype's smallest value (the
largest for unsigned dtypes) and the others at zero, a gather it feeds fails
with "indices[...] = v is not in [0, N)". Probing again at N - 1 finds a
smaller table fed by the same input, and the smallest N is the input's range.
A negative first probe is also safe for an input the model uses as a size or
count: it allocates nothing. A function exported with XLA inside clamps
instead of failing, and then no range is found.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from .model import TensorInfo

_log = logging.getLogger(__name__)

_OUT_OF_RANGE = re.compile(r"is not in \[(-?\d+), (\d+)\)")
"""TensorFlow's message for a gather index outside its table."""

MAX_PROBES = 16
"""Probes per integer input at most: one per distinct table it feeds, and one more."""


def keras_lookup_ranges(model: keras.Model, inputs: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Integer inputs of ``model`` fed straight into an ``Embedding``: name -> [0, input_dim).

    ``inputs`` maps each input name to the model's input tensor of that name.
    """
    ranges: dict[str, tuple[int, int]] = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Embedding):
            continue
        try:
            fed = layer.input
        except (AttributeError, ValueError):
            continue
        for name, tensor in inputs.items():
            if fed is tensor:
                low, high = ranges.get(name, (0, layer.input_dim))
                ranges[name] = (low, min(high, layer.input_dim))
    return ranges


def probed_lookup_ranges(
    call: Callable[[dict[str, tf.Tensor]], Any], inputs: tuple[TensorInfo, ...]
) -> dict[str, tuple[int, int]]:
    """Integer inputs that index a table of ``call``'s (a SavedModel's endpoint,
    called on one example by input name): name -> [0, N), by probing (see the module)."""
    ranges: dict[str, tuple[int, int]] = {}
    for probed in inputs:
        if not np.issubdtype(np.dtype(probed.dtype), np.integer):
            continue
        limits = np.iinfo(probed.dtype)
        high = int(limits.max) + 1
        value = int(limits.min) if limits.min < 0 else int(limits.max)
        for _ in range(MAX_PROBES):
            table = _table_size(call, inputs, probed, value)
            if table is None or table >= high:
                break
            high = table
            value = high - 1
        else:
            _log.warning("input %r feeds more than %d lookup tables; its range may be too wide", probed.name, MAX_PROBES)
        if high <= limits.max:
            ranges[probed.name] = (0, high)
    return ranges


def _table_size(
    call: Callable[[dict[str, tf.Tensor]], Any], inputs: tuple[TensorInfo, ...], probed: TensorInfo, value: int
) -> int | None:
    """N of the first table that refuses id ``value`` in ``probed``, or None when none does."""
    named = {
        info.name: tf.constant(
            np.full((1, *(d or 1 for d in info.shape)), value if info is probed else 0, dtype=info.dtype)
        )
        for info in inputs
    }
    try:
        call(named)
    except tf.errors.InvalidArgumentError as err:
        found = _OUT_OF_RANGE.search(str(err))
        if found is not None and int(found.group(1)) == 0:
            return int(found.group(2))
        _log.info("input %r: probe at %d failed without naming a table: %s", probed.name, value, err)
    except Exception as err:  # a model that cannot run this probe at all is served as it was
        _log.info("input %r: probe at %d failed: %s", probed.name, value, err)
    return None
