"""The benchmarked MLP and every way of taking its per-example input Hessians.

One Keras MLP is built per case; the TensorFlow methods call that very model,
and the JAX and torch versions are built from copies of its weight arrays, so
every method differentiates the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

import hessd_server as hs

HIDDEN = (256, 256)
"""Hidden layer widths; every hidden layer has a tanh activation, the output is one linear unit."""

Compute = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Method:
    """One way of computing the Hessians of the MLP, ready to call.

    Attributes:
        key: short identifier, used to select methods.
        label: the name shown in the table.
        compute: x (B, D) -> the method's own result, as a NumPy array.
        full: ``compute`` returns the whole (B, D, B, D) Hessian rather than
            the per-example blocks (B, D, D).
    """

    key: str
    label: str
    compute: Compute
    full: bool

    def blocks(self, result: np.ndarray) -> np.ndarray:
        """The per-example blocks (B, D, D) of a result of ``compute``."""
        if not self.full:
            return result
        batch = np.arange(result.shape[0])
        return result[batch, :, batch, :]


def build_mlp(dim: int, seed: int = 0) -> keras.Model:
    """The MLP dim -> 256 -> 256 -> 1 (tanh), float32, with seeded random weights and biases."""
    inputs = keras.Input((dim,), name="x")
    hidden = inputs
    widths = (*HIDDEN, 1)
    for index, width in enumerate(widths):
        hidden = keras.layers.Dense(
            width,
            activation="tanh" if index < len(HIDDEN) else None,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2 * index),
            bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 2 * index + 1),
        )(hidden)
    return keras.Model(inputs, hidden, name=f"mlp_{dim}")


def layer_weights(model: keras.Model) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel (in, out), bias (out,)) of every Dense layer, in order: the arrays
    the JAX and torch versions are built from."""
    weights = [np.asarray(w, dtype=np.float32) for w in model.get_weights()]
    return list(zip(weights[::2], weights[1::2]))


def hessd_method(model: keras.Model, batch: int) -> Method:
    """``hs.hessian(m, x)``: per-example blocks, compiled with XLA."""
    loaded = hs.load_model(model)
    return Method("hessd", "hessd `hs.hessian`", lambda x: hs.hessian(loaded, x), full=False)


def tf_hessians_method(model: keras.Model, batch: int) -> Method:
    """``tf.hessians(tf.reduce_sum(model(x)), x)`` in a ``tf.function`` (graph mode)."""

    @tf.function(input_signature=[_input_spec(model, batch)])
    def hessians(x: tf.Tensor) -> tf.Tensor:
        return tf.hessians(tf.reduce_sum(model(x, training=False)), x)[0]

    return Method("tf.hessians", "`tf.hessians` in `tf.function`", lambda x: hessians(x).numpy(), full=True)


def tf_jacobian_method(model: keras.Model, batch: int) -> Method:
    """The nested-tape recipe in a ``tf.function``: the outer tape's ``jacobian``
    of the inner tape's gradient, the full (B, D, B, D) Hessian."""

    @tf.function(input_signature=[_input_spec(model, batch)])
    def nested_tapes(x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = model(x, training=False)
            gradient = inner.gradient(y, x)
        return outer.jacobian(gradient, x)

    return Method("tf.jacobian", "nested tapes `jacobian` in `tf.function`", lambda x: nested_tapes(x).numpy(), full=True)


def jax_method(model: keras.Model, batch: int) -> Method:
    """``jax.jit(jax.vmap(jax.hessian(f)))`` on a JAX copy of the weights."""
    import jax
    import jax.numpy as jnp

    params = [(jnp.asarray(kernel), jnp.asarray(bias)) for kernel, bias in layer_weights(model)]

    def mlp(layers: list[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
        for kernel, bias in layers[:-1]:
            x = jnp.tanh(x @ kernel + bias)
        kernel, bias = layers[-1]
        return jnp.sum(x @ kernel + bias)

    hessians = jax.jit(jax.vmap(jax.hessian(mlp, argnums=1), in_axes=(None, 0)))
    return Method("jax", "JAX `jit(vmap(hessian))`", lambda x: np.asarray(hessians(params, x)), full=False)


def torch_method(model: keras.Model, batch: int) -> Method:
    """``torch.func.vmap(torch.func.hessian(f))`` on a torch copy of the weights."""
    import torch

    layers = [(torch.from_numpy(kernel.copy()), torch.from_numpy(bias.copy())) for kernel, bias in layer_weights(model)]

    def mlp(x: torch.Tensor) -> torch.Tensor:
        for kernel, bias in layers[:-1]:
            x = torch.tanh(x @ kernel + bias)
        kernel, bias = layers[-1]
        return torch.sum(x @ kernel + bias)

    hessians = torch.func.vmap(torch.func.hessian(mlp))
    return Method("torch", "torch.func `vmap(hessian)`", lambda x: hessians(torch.from_numpy(x)).numpy(), full=False)


BUILDERS: dict[str, Callable[[keras.Model, int], Method]] = {
    "hessd": hessd_method,
    "tf.hessians": tf_hessians_method,
    "tf.jacobian": tf_jacobian_method,
    "jax": jax_method,
    "torch": torch_method,
}
"""Every method by key, hessd (the reference) first. The JAX and torch builders
raise ``ImportError`` where their library is not installed."""


def _input_spec(model: keras.Model, batch: int) -> tf.TensorSpec:
    return tf.TensorSpec((batch, *model.input_shape[1:]), tf.float32)


MID_DIM = 64
"""Input size of the ``mid`` MLP that the wire benchmark serves."""


def build_mid() -> keras.Model:
    """The ``mid`` MLP, 64 -> 256 -> 256 -> 1 (tanh), as ``hessd-server --model mid=bench_methods:build_mid`` loads it."""
    return build_mlp(MID_DIM)
