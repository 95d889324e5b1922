"""The embedded default model ``demo``: the seed's Dense(10, sigmoid) -> Dense(1)
on 10 inputs, with fixed weights so every run serves the same function."""

from __future__ import annotations

import keras
import numpy as np

from .config import DEMO_MODEL_SOURCE

__all__ = ["DEMO_MODEL_SOURCE", "build_demo_model"]


def build_demo_model() -> keras.Model:
    """y = W2 sigmoid(W1 x + b1) + b2, x of shape (B, 10) float32, y of shape (B, 1).

    The weights are drawn from a fixed seed, so they are the same everywhere.
    """
    inputs = keras.Input((10,), name="x")
    hidden = keras.layers.Dense(10, activation="sigmoid", name="hidden")(inputs)
    outputs = keras.layers.Dense(1, name="output")(hidden)
    model = keras.Model(inputs, outputs, name="demo")
    rng = np.random.default_rng(20261129)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model
