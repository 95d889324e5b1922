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
    """

    model: keras.Model
    structure: Any
    names: tuple[str, ...]

    def __call__(self, inputs: Mapping[str, tf.Tensor]) -> Any:
        """Named (B, *S_i) tensors -> the model's outputs, any nest of (B, ...) tensors."""
        packed = keras.tree.pack_sequence_as(self.structure, [inputs[n] for n in self.names])
        return self.model(packed, training=False)
