"""Test models and independent derivative references for the engine tests.

References never use hessd's own code: float64 central finite differences of
the model's value, ``tf.hessians`` (where it runs), and closed forms.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import threading
from typing import Any, Callable

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


def lstm_model(steps: int | None = 4) -> keras.Model:
    """Sequences of ``steps`` steps (None: any length) of 3 features -> LSTM(5) -> Dense(1)."""
    keras.utils.set_random_seed(2)
    return keras.Sequential([keras.Input((steps, 3)), keras.layers.LSTM(5), keras.layers.Dense(1)])


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


WAIT_S = 60.0
"""How long a test helper waits for another thread before giving up (a hang guard, never a verdict)."""


class TraceGate:
    """Holds every graph-mode call of a :class:`GatedTanh` (a trace) until opened.

    Eager calls (the batch-independence probe, output-size lookups) pass
    freely. Only while ``armed``, so that building the Keras model is not held.
    """

    def __init__(self) -> None:
        self.armed = False
        self.opened = threading.Event()
        self.entered = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        """Traces now held at the gate."""
        self.traces = 0
        """Traces that reached the gate so far."""

    def reset(self) -> None:
        """Disarm and close again, for the next test."""
        self.armed = False
        self.opened.clear()
        self.entered.clear()
        self.traces = 0

    def pass_through(self) -> None:
        if not self.armed or tf.executing_eagerly():
            return
        with self._lock:
            self.inside += 1
            self.traces += 1
        self.entered.set()
        try:
            self.opened.wait(WAIT_S)
        finally:
            with self._lock:
                self.inside -= 1


class GatedTanh(keras.layers.Layer):
    """tanh, whose traces wait at ``gate``."""

    def __init__(self, gate: TraceGate, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def call(self, x: tf.Tensor) -> tf.Tensor:
        self.gate.pass_through()
        return tf.tanh(x)


def gated_model(gate: TraceGate, dim: int = 3) -> keras.Model:
    """Dense(4) -> gated tanh -> Dense(1) on ``dim`` inputs; its traces wait at ``gate`` once armed."""
    keras.utils.set_random_seed(9)
    inputs = keras.Input((dim,))
    hidden = GatedTanh(gate)(keras.layers.Dense(4)(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


class RunGate:
    """Counts the runs of graphs a :class:`GatedRuns` layer was traced into, and
    holds each run (a compiled call, in graph mode) at the gate while armed, until opened."""

    def __init__(self) -> None:
        self.armed = False
        self.opened = threading.Event()
        self.entered = threading.Event()
        self._lock = threading.Lock()
        self.runs = 0
        """Runs (and eager calls) that passed the gate so far."""

    def reset(self) -> None:
        """Disarm and close again, for the next test."""
        self.armed = False
        self.opened.clear()
        self.entered.clear()

    def pass_through(self) -> np.int32:
        with self._lock:
            self.runs += 1
        if self.armed:
            self.entered.set()
            self.opened.wait(WAIT_S)
        return np.int32(0)


class GatedRuns(keras.layers.Layer):
    """The identity, whose every run (not its trace) passes through ``gate``: a
    ``py_function``, so a model holding it runs in graph mode, never in XLA."""

    def __init__(self, gate: RunGate, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def call(self, x: tf.Tensor) -> tf.Tensor:
        passed = tf.ensure_shape(tf.py_function(self.gate.pass_through, [], tf.int32), [])
        return x + tf.cast(passed, x.dtype)

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor(x.shape, x.dtype)


def gated_runs_model(gate: RunGate, dim: int = 12) -> keras.Model:
    """Gated identity -> Dense(8, tanh) -> Dense(1) on ``dim`` inputs; its runs pass through ``gate``."""
    keras.utils.set_random_seed(10)
    inputs = keras.Input((dim,))
    hidden = keras.layers.Dense(8, activation="tanh")(GatedRuns(gate)(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


class OneOffFailure:
    """A failure to raise once, from inside a running TensorFlow graph, when armed."""

    def __init__(self, error: type[Exception] = MemoryError) -> None:
        self.error = error
        self.armed = False
        self.raised = 0

    def check(self, x: np.ndarray) -> np.ndarray:
        if self.armed:
            self.armed = False
            self.raised += 1
            raise self.error("a one-off failure")
        return np.zeros_like(x[:, :1])


class FailsOnce(keras.layers.Layer):
    """sum(sin(x)) per example, plus a zero from a numpy function that raises when ``failure`` is armed
    (a ``MemoryError`` there reaches the caller as TensorFlow's ``ResourceExhaustedError``)."""

    def __init__(self, failure: OneOffFailure, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.failure = failure

    def call(self, x: tf.Tensor) -> tf.Tensor:
        zero = tf.numpy_function(self.failure.check, [x], x.dtype, stateful=True)
        return tf.reduce_sum(tf.sin(x), axis=-1, keepdims=True) + tf.stop_gradient(tf.ensure_shape(zero, (None, 1)))


def fails_once_model(failure: OneOffFailure, dim: int = 3) -> keras.Model:
    """sum(sin(x)) on ``dim`` inputs (Hessian diag(-sin x)); graph mode only (XLA cannot compile it)."""
    inputs = keras.Input((dim,))
    return keras.Model(inputs, FailsOnce(failure)(inputs))


class CrashesWhenTraced(keras.layers.Layer):
    """Runs eagerly (so loading and the probe work) but raises whenever it is traced into a graph."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if not tf.executing_eagerly():
            raise RuntimeError("cannot trace: see /srv/secret/model_code.py line 7")
        return tf.tanh(x)

    def compute_output_spec(self, x: keras.KerasTensor) -> keras.KerasTensor:
        return keras.KerasTensor(x.shape, x.dtype)


def untraceable_model() -> keras.Model:
    """sum(tanh(x)) over inputs of unknown length (so a server does not warm it); no candidate compiles it."""
    inputs = keras.Input((None,))
    return keras.Model(inputs, keras.ops.sum(CrashesWhenTraced()(inputs), axis=-1, keepdims=True))


def per_step_model() -> keras.Model:
    """Sequences (L, 2) -> Dense(3, tanh) -> Dense(1) per step: L outputs per example, K = L."""
    keras.utils.set_random_seed(10)
    inputs = keras.Input((None, 2))
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(3, activation="tanh")(inputs)))


class GradientOnlyMixing(keras.layers.Layer):
    """x plus (batch mean - the same mean with its gradient stopped): the value is exactly x, but each
    example's output has a gradient with respect to every other example."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        mean = tf.reduce_mean(x, axis=0, keepdims=True)
        return x + (mean - tf.stop_gradient(mean))


def gradient_only_mixing_model() -> keras.Model:
    keras.utils.set_random_seed(12)
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(1, activation="tanh")(GradientOnlyMixing()(inputs)))


class IntegerBatchMean(keras.layers.Layer):
    """Adds the batch mean of the integer input ``ids`` to every example: mixing through ids alone."""

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        x, ids = inputs
        return x + tf.reduce_mean(tf.cast(ids, x.dtype), axis=0, keepdims=True)


def integer_mixing_model() -> keras.Model:
    """Inputs ``x`` float32 (3,) and ``ids`` int32 (1,) -> tanh -> Dense(1)."""
    keras.utils.set_random_seed(13)
    x = keras.Input((3,), name="x")
    ids = keras.Input((1,), dtype="int32", name="ids")
    mixed = keras.layers.Activation("tanh")(IntegerBatchMean()([x, ids]))
    return keras.Model({"x": x, "ids": ids}, keras.layers.Dense(1)(mixed))


def embedding_model(vocabulary: int = 5) -> keras.Model:
    """Inputs ``x`` float32 (3,) and ``ids`` int32 (2,) into an Embedding of ``vocabulary`` rows."""
    keras.utils.set_random_seed(14)
    x = keras.Input((3,), name="x")
    ids = keras.Input((2,), dtype="int32", name="ids")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(vocabulary, 2)(ids))
    hidden = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([x, embedded]))
    return keras.Model({"x": x, "ids": ids}, keras.layers.Dense(1)(hidden))


def finite_difference_gradient(value: Callable[[np.ndarray], np.ndarray], x: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """df_b/dx_b (B, *S) of ``value`` (float64 (N, *S) -> (N,)) by central differences in float64."""
    points = x.astype(np.float64).reshape(x.shape[0], -1)
    grad = np.zeros_like(points)
    for i in range(points.shape[1]):
        delta = np.zeros_like(points)
        delta[:, i] = step
        up = value((points + delta).reshape(x.shape))
        down = value((points - delta).reshape(x.shape))
        grad[:, i] = (up - down) / (2 * step)
    return grad.reshape(x.shape)


def quadratic_with_spectrum(spectrum: np.ndarray, seed: int = 0) -> tuple[keras.Model, np.ndarray]:
    """f(x) = ‖Lx‖² (a Dense layer with kernel Lᵀ, dotted with itself), whose
    Hessian is H = 2LᵀL = U diag(spectrum) Uᵀ for a random orthogonal U.

    Returns the model and H (D, D); ``spectrum`` must be >= 0.
    """
    dim = len(spectrum)
    u = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))[0]
    inputs = keras.Input((dim,))
    projected = keras.layers.Dense(dim, use_bias=False)(inputs)
    model = keras.Model(inputs, keras.layers.Dot(axes=1)([projected, projected]))
    model.set_weights([(u * np.sqrt(np.asarray(spectrum) / 2)).astype(np.float32)])
    return model, (u * spectrum) @ u.T


class SumOfSines(keras.layers.Layer):
    """Σ_i sin(x_i) per example, (B, D) -> (B, 1)."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return keras.ops.sum(keras.ops.sin(x), axis=-1, keepdims=True)


def sine_model(dim: int) -> keras.Model:
    """f(x) = Σ sin(x_i): H = diag(−sin x), Laplacian −Σ sin(x_i)."""
    return keras.Sequential([keras.Input((dim,)), SumOfSines()])
