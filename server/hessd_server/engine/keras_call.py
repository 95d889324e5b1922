"""How the engine calls a Keras model: named input tensors in, outputs out,
with the Keras model kept at hand for strategies that read its layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import keras
import tensorflow as tf


@dataclass(frozen=True)
class KerasCall:
    """Calls ``model`` in inference mode on named inputs.

    Attributes:
        model: the Keras model (float32, or its float64 copy).
        structure: the nest of the model's input tensors, which the named
            inputs are packed into.
        names: the input names, in the order of ``keras.tree.flatten(structure)``.
        weights_of: for a copy of another model (the float64 copy), that model:
            :meth:`refresh_weights` gives the copy its weights as they are now.
    """

    model: keras.Model
    structure: Any
    names: tuple[str, ...]
    weights_of: keras.Model | None = None

    def refresh_weights(self) -> None:
        """Assign ``weights_of``'s weights, cast to the copy's dtypes, to the copy; nothing
        for a model that is not a copy. Called first in a traced function, these
        assignments run at each of its calls, before anything reads the weights, so a
        copy computes with the weights of the moment (after ``set_weights`` or a
        training step) at the cost of one cast of every weight per call."""
        if self.weights_of is None:
            return
        for mine, theirs in zip(self.model.weights, self.weights_of.weights, strict=True):
            mine.assign(tf.cast(theirs, mine.dtype))

    def __call__(self, inputs: Mapping[str, tf.Tensor]) -> Any:
        """Named (B, *S_i) tensors -> the model's outputs, any nest of (B, ...) tensors."""
        packed = keras.tree.pack_sequence_as(self.structure, [inputs[n] for n in self.names])
        return self.model(packed, training=False)
