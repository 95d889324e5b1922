"""Test models and independent derivative references for the engine tests.

References never use hessd's own code: float64 central finite differences of
the model's value, ``tf.hessians`` (where it runs), and closed forms.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from typing import Callable

import keras
import numpy as np
import tensorflow as tf


def seed_linear_model() -> keras.Model:
    """The seed question's model: Dense(1) on 10 inputs (its Hessian is zero)."""
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(1)])


def seed_sigmoid_model() -> keras.Model:
    """The seed answer's model: Dense(10, sigmoid) -> Dense(1) on 10 inputs."""
    keras.utils.set_random_seed(123)
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, activation="sigmoid"), keras.layers.Dense(1)])


def quadratic_model(a: np.ndarray) -> keras.Model:
    """y = sum((x A)^2), whose Hessian is 2 A A^T for every x; a: (D, K)."""
    inputs = keras.Input((a.shape[0],))
    projected = keras.layers.Dense(a.shape[1], use_bias=False)(inputs)
    outputs = keras.ops.sum(keras.ops.square(projected), axis=-1, keepdims=True)
    model = keras.Model(inputs, outputs)
    model.set_weights([a.astype(np.float32)])
    return model


def tanh_mlp(dim: int, outputs: int = 1, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((dim,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(outputs, activation="tanh")]
    )


def relu_mlp(dim: int) -> keras.Model:
    """Piecewise linear, so its Hessian is zero almost everywhere."""
    keras.utils.set_random_seed(6)
    return keras.Sequential([keras.Input((dim,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])


def conv_model() -> keras.Model:
    """Conv2D on (5, 5, 2) images -> softplus -> Dense(1)."""
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            keras.layers.Conv2D(3, 3, activation="softplus"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )


def lstm_model() -> keras.Model:
    keras.utils.set_random_seed(2)
    return keras.Sequential([keras.Input((4, 3)), keras.layers.LSTM(5), keras.layers.Dense(1)])


def batchnorm_dropout_model() -> keras.Model:
    """Dense -> BatchNormalization (non-trivial moving statistics) -> Dropout -> Dense."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    normed = keras.layers.BatchNormalization()(hidden)
    dropped = keras.layers.Dropout(0.5)(normed)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(dropped))
    bn = model.layers[2]
    rng = np.random.default_rng(3)
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * 1.5, beta + 0.1, rng.normal(size=mean.shape), rng.uniform(0.5, 2.0, size=var.shape)])
    return model


def two_input_model() -> keras.Model:
    """Inputs ``state`` (4,) and ``control`` (2,) -> two outputs through tanh."""
    keras.utils.set_random_seed(4)
    state = keras.Input((4,), name="state")
    control = keras.Input((2,), name="control")
    joined = keras.layers.Concatenate()([state, control])
    hidden = keras.layers.Dense(8, activation="tanh")(joined)
    return keras.Model({"state": state, "control": control}, keras.layers.Dense(2)(hidden))


class SubtractBatchMean(keras.layers.Layer):
    """Mixes examples: each row minus the mean over the batch."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x - keras.ops.mean(x, axis=0, keepdims=True)


def batch_mixing_model() -> keras.Model:
    keras.utils.set_random_seed(5)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="tanh")(SubtractBatchMean()(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


def tf_hessians(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """``tf.hessians(tf.reduce_sum(model(x)), x)`` in graph mode, as the seed wrote it: (B, *S, B, *S)."""

    @tf.function
    def run(inputs: tf.Tensor) -> tf.Tensor:
        return tf.hessians(tf.reduce_sum(model(inputs)), inputs)[0]

    return run(tf.constant(x)).numpy()


def tf_hessians_wrt(model: keras.Model, inputs: dict[str, np.ndarray], wrt: str) -> np.ndarray:
    """``tf.hessians`` of ``reduce_sum(model(inputs))`` with respect to ``inputs[wrt]``, others fixed."""

    @tf.function
    def run(x: tf.Tensor, fixed: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.hessians(tf.reduce_sum(model({**fixed, wrt: x})), x)[0]

    return run(tf.constant(inputs[wrt]), {k: tf.constant(v) for k, v in inputs.items() if k != wrt}).numpy()


def diagonal_blocks(full: np.ndarray, batch: int) -> np.ndarray:
    """(B, *S, B, *S) -> (B, *S, *S), the per-example blocks."""
    event = full.shape[1 : full.ndim // 2]
    dim = int(np.prod(event))
    flat = full.reshape(batch, dim, batch, dim)
    return np.stack([flat[b, :, b, :] for b in range(batch)]).reshape(batch, *event, *event)


def finite_difference_hessians(value: Callable[[np.ndarray], np.ndarray], x: np.ndarray, step: float = 1e-4) -> np.ndarray:
    """Per-example Hessian blocks (B, *S, *S) of ``value`` (float64 (N, *S) -> (N,))
    by float64 central differences, all 4 D^2 evaluations per example in one batch."""
    x = x.astype(np.float64)
    batch, event = x.shape[0], x.shape[1:]
    dim = int(np.prod(event))
    eye = np.eye(dim) * step
    signs = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    blocks = np.empty((batch, dim, dim))
    for b in range(batch):
        base = x[b].reshape(dim)
        points = np.stack(
            [base + si * eye[i] + sj * eye[j] for si, sj in signs for i in range(dim) for j in range(dim)]
        )
        f = value(points.reshape(-1, *event)).reshape(4, dim, dim)
        blocks[b] = (f[0] - f[1] - f[2] + f[3]) / (4 * step * step)
    return blocks.reshape(batch, *event, *event)


def float64_value(model: keras.Model, weights: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """f_b = sum_k w_k y[b, k] of a float64 clone of ``model`` (outputs flattened
    and concatenated in order; w all ones by default), built here for the reference."""
    clone = keras.models.clone_model(
        model,
        input_tensors=keras.Input(batch_shape=model.inputs[0].shape, dtype="float64"),
        clone_function=lambda layer: layer.__class__.from_config({**layer.get_config(), "dtype": "float64"}),
    )
    clone.set_weights([w.astype(np.float64) for w in model.get_weights()])

    def value(points: np.ndarray) -> np.ndarray:
        outputs = keras.tree.flatten(clone(points, training=False))
        flat = np.concatenate([np.asarray(y).reshape(points.shape[0], -1) for y in outputs], axis=1)
        return flat @ (np.ones(flat.shape[1]) if weights is None else weights.astype(np.float64))

    return value

def two_output_model() -> keras.Model:
    """Outputs ``a`` (2,) and ``b`` (3,) from 4 inputs; K = 5 in output order."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="tanh")(inputs)
    return keras.Model(inputs, [keras.layers.Dense(2, name="a")(hidden), keras.layers.Dense(3, activation="tanh", name="b")(hidden)])


def variable_length_model() -> keras.Model:
    """Sequences of any length with 2 features -> tanh -> mean over time -> Dense(1)."""
    keras.utils.set_random_seed(8)
    inputs = keras.Input((None, 2))
    hidden = keras.layers.Dense(3, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(hidden)))
