"""The benchmarked models and every way of taking their per-example input Hessians.

Each case builds one Keras model (an MLP, the same MLP in float64, an LSTM or a
small CNN). The TensorFlow methods call that very model, and the JAX and torch
versions are written out from copies of its weight arrays, so every method
differentiates the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

import hessd_server as hs
from hessd_server.engine import strategies

HIDDEN = (256, 256)
"""MLP hidden layer widths; every hidden layer has a tanh activation, the output is one linear unit."""

LSTM_STEPS, LSTM_FEATURES, LSTM_UNITS = 6, 4, 16
"""The LSTM model: sequences of 6 steps of 4 features (D = 24) -> LSTM(16) -> Dense(1)."""

IMAGE, FILTERS = (8, 8, 1), 4
"""The CNN model: 8x8x1 images (D = 64) -> Conv2D(4, 3x3, tanh) -> Flatten -> Dense(1)."""

LARGE_IMAGE, LARGE_FILTERS = (16, 16, 1), 8
"""The larger CNN model, kind "cnn16": 16x16x1 images (D = 256) -> Conv2D(8, 3x3, tanh) -> Flatten -> Dense(1)."""

KINDS = ("mlp", "mlp64", "lstm", "cnn", "cnn16")
"""Model kinds: the tanh MLP in float32 and in float64, the LSTM, the two CNNs."""

Compute = Callable[[np.ndarray], np.ndarray]


class NotExpressible(Exception):
    """This method cannot compute this model (a row left out, with a note)."""


@dataclass(frozen=True)
class Workload:
    """One benchmarked model and its per-example input shape.

    Attributes:
        kind: one of :data:`KINDS`.
        model: the Keras model every method differentiates.
        event_shape: the per-example input shape S; D = prod(S).
        dtype: "float32" or "float64".
    """

    kind: str
    model: keras.Model
    event_shape: tuple[int, ...]
    dtype: str

    @property
    def dim(self) -> int:
        """D, the number of input entries per example."""
        return int(np.prod(self.event_shape))


@dataclass(frozen=True)
class Method:
    """One way of computing the Hessians of a workload, ready to call.

    Attributes:
        key: short identifier, used to select methods.
        label: the name shown in the table.
        compute: x (B, *S) -> the method's own result, as a NumPy array.
        full: ``compute`` returns the whole Hessian (B, *S, B, *S) rather than
            the per-example blocks (B, *S, *S).
    """

    key: str
    label: str
    compute: Compute
    full: bool

    def blocks(self, result: np.ndarray, batch: int, dim: int) -> np.ndarray:
        """The per-example blocks (B, D, D) of a result of ``compute``."""
        if not self.full:
            return result.reshape(batch, dim, dim)
        full = result.reshape(batch, dim, batch, dim)
        index = np.arange(batch)
        return full[index, :, index, :]


def build_workload(kind: str, dim: int, seed: int = 0) -> Workload:
    """The model of ``kind`` with seeded random weights; ``dim`` is the MLP's D
    (the LSTM and the CNN have fixed input shapes)."""
    if kind in ("mlp", "mlp64"):
        dtype = "float64" if kind == "mlp64" else "float32"
        return Workload(kind, build_mlp(dim, seed=seed, dtype=dtype), (dim,), dtype)
    keras.utils.set_random_seed(seed)
    if kind == "lstm":
        model = keras.Sequential(
            [keras.Input((LSTM_STEPS, LSTM_FEATURES)), keras.layers.LSTM(LSTM_UNITS), keras.layers.Dense(1)]
        )
        return Workload(kind, model, (LSTM_STEPS, LSTM_FEATURES), "float32")
    if kind in ("cnn", "cnn16"):
        image, filters = (IMAGE, FILTERS) if kind == "cnn" else (LARGE_IMAGE, LARGE_FILTERS)
        model = keras.Sequential(
            [
                keras.Input(image),
                keras.layers.Conv2D(filters, 3, activation="tanh"),
                keras.layers.Flatten(),
                keras.layers.Dense(1),
            ]
        )
        return Workload(kind, model, image, "float32")
    raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")


def build_mlp(dim: int, seed: int = 0, dtype: str = "float32") -> keras.Model:
    """The MLP dim -> 256 -> 256 -> 1 (tanh), with seeded random weights and biases."""
    inputs = keras.Input((dim,), name="x", dtype=dtype)
    hidden = inputs
    widths = (*HIDDEN, 1)
    for index, width in enumerate(widths):
        hidden = keras.layers.Dense(
            width,
            activation="tanh" if index < len(HIDDEN) else None,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2 * index),
            bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 2 * index + 1),
            dtype=dtype,
        )(hidden)
    return keras.Model(inputs, hidden, name=f"mlp_{dim}")


def _weights(workload: Workload) -> list[np.ndarray]:
    return [np.asarray(w, dtype=workload.dtype) for w in workload.model.get_weights()]


def hessd_method(workload: Workload, batch: int, strategy: str | None = None) -> Method:
    """``hs.hessian(m, x)``: per-example blocks, compiled with XLA, at the
    workload's precision; the strategy by default (the rule, or a tuning record), or forced
    to ``strategy``."""
    loaded = hs.load_model(workload.model, config=hs.EngineConfig(strategy=strategy))
    precision = workload.dtype
    if strategy is not None:
        refused = strategies.refusal(strategy, loaded.call_for(workload.dtype), loaded.input_names[0])
        if refused:
            raise NotExpressible(f"strategy {strategy} refused: {refused}")
        x = np.zeros((batch, *workload.event_shape), workload.dtype)
        hs.hessian(loaded, x, precision=precision)
        outcome = {t.strategy: t.outcome for t in loaded.metadata().strategy_timings}.get(strategy)
        if outcome != "chosen":
            raise NotExpressible(f"strategy {strategy} {outcome or 'not tried'} on this model")
    key = "hessd" if strategy is None else f"hessd:{strategy}"
    label = "hessd `hs.hessian` (default settings)" if strategy is None else f"hessd, strategy `{strategy}`"
    return Method(key, label, lambda x: hs.hessian(loaded, x, precision=precision), full=False)


def tf_hessians_method(workload: Workload, batch: int) -> Method:
    """``tf.hessians(tf.reduce_sum(model(x)), x)`` in a ``tf.function`` (graph mode)."""
    model = workload.model

    @tf.function(input_signature=[_input_spec(workload, batch)])
    def hessians(x: tf.Tensor) -> tf.Tensor:
        return tf.hessians(tf.reduce_sum(model(x, training=False)), x)[0]

    return Method("tf.hessians", "`tf.hessians` in `tf.function`", lambda x: hessians(x).numpy(), full=True)


def tf_jacobian_method(workload: Workload, batch: int) -> Method:
    """The nested-tape recipe in a ``tf.function``: the outer tape's ``jacobian``
    of the inner tape's gradient, the full (B, D, B, D) Hessian."""
    if workload.kind == "lstm":
        raise NotExpressible("pfor cannot vectorize the LSTM's jacobian")
    model = workload.model

    @tf.function(input_signature=[_input_spec(workload, batch)])
    def nested_tapes(x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = model(x, training=False)
            gradient = inner.gradient(y, x)
        return outer.jacobian(gradient, x)

    return Method("tf.jacobian", "nested tapes `jacobian` in `tf.function`", lambda x: nested_tapes(x).numpy(), full=True)


def jax_method(workload: Workload, batch: int) -> Method:
    """``jax.jit(jax.vmap(jax.hessian(f)))`` on a JAX copy of the weights."""
    import jax
    import jax.numpy as jnp

    if workload.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    params = [jnp.asarray(w) for w in _weights(workload)]
    function = {"mlp": _jax_mlp, "mlp64": _jax_mlp, "lstm": _jax_lstm, "cnn": _jax_cnn, "cnn16": _jax_cnn}[workload.kind]
    hessians = jax.jit(jax.vmap(jax.hessian(function, argnums=1), in_axes=(None, 0)))
    return Method("jax", "JAX `jit(vmap(hessian))`", lambda x: np.asarray(hessians(params, x)), full=False)


def _jax_mlp(weights: list[Any], x: Any) -> Any:
    import jax.numpy as jnp

    layers = list(zip(weights[::2], weights[1::2]))
    for kernel, bias in layers[:-1]:
        x = jnp.tanh(x @ kernel + bias)
    kernel, bias = layers[-1]
    return jnp.sum(x @ kernel + bias)


def _jax_lstm(weights: list[Any], x: Any) -> Any:
    import jax
    import jax.numpy as jnp

    kernel, recurrent, bias, dense_kernel, dense_bias = weights
    h = c = jnp.zeros(LSTM_UNITS, x.dtype)
    for step in range(LSTM_STEPS):
        i, f, g, o = jnp.split(x[step] @ kernel + h @ recurrent + bias, 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return jnp.sum(h @ dense_kernel + dense_bias)


def _jax_cnn(weights: list[Any], x: Any) -> Any:
    import jax
    import jax.numpy as jnp

    kernel, bias, dense_kernel, dense_bias = weights
    maps = jax.lax.conv_general_dilated(x[None], kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    hidden = jnp.tanh(maps[0] + bias).reshape(-1)
    return jnp.sum(hidden @ dense_kernel + dense_bias)


def torch_method(workload: Workload, batch: int) -> Method:
    """``torch.func.vmap(torch.func.hessian(f))`` on a torch copy of the weights."""
    import torch

    weights = [torch.from_numpy(w.copy()) for w in _weights(workload)]
    function = {"mlp": _torch_mlp, "mlp64": _torch_mlp, "lstm": _torch_lstm, "cnn": _torch_cnn, "cnn16": _torch_cnn}[workload.kind]
    hessians = torch.func.vmap(torch.func.hessian(lambda x: function(weights, x)))
    return Method("torch", "torch.func `vmap(hessian)`", lambda x: hessians(torch.from_numpy(x)).numpy(), full=False)


def _torch_mlp(weights: list[Any], x: Any) -> Any:
    import torch

    layers = list(zip(weights[::2], weights[1::2]))
    for kernel, bias in layers[:-1]:
        x = torch.tanh(x @ kernel + bias)
    kernel, bias = layers[-1]
    return torch.sum(x @ kernel + bias)


def _torch_lstm(weights: list[Any], x: Any) -> Any:
    import torch

    kernel, recurrent, bias, dense_kernel, dense_bias = weights
    h = c = torch.zeros(LSTM_UNITS, dtype=x.dtype)
    for step in range(LSTM_STEPS):
        i, f, g, o = torch.split(x[step] @ kernel + h @ recurrent + bias, LSTM_UNITS)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    return torch.sum(h @ dense_kernel + dense_bias)


def _torch_cnn(weights: list[Any], x: Any) -> Any:
    import torch

    kernel, bias, dense_kernel, dense_bias = weights
    maps = torch.nn.functional.conv2d(x.permute(2, 0, 1)[None], kernel.permute(3, 2, 0, 1), bias)
    hidden = torch.tanh(maps[0].permute(1, 2, 0)).reshape(-1)
    return torch.sum(hidden @ dense_kernel + dense_bias)


def _strategy_builder(strategy: str) -> Callable[[Workload, int], Method]:
    return lambda workload, batch: hessd_method(workload, batch, strategy)


BUILDERS: dict[str, Callable[[Workload, int], Method]] = {
    "hessd": hessd_method,
    **{f"hessd:{name}": _strategy_builder(name) for name in strategies.STRATEGIES},
    "tf.hessians": tf_hessians_method,
    "tf.jacobian": tf_jacobian_method,
    "jax": jax_method,
    "torch": torch_method,
}
"""Every method by key, hessd (the reference) first. The JAX and torch builders
raise ``ImportError`` where their library is not installed, and any builder
raises :class:`NotExpressible` where it cannot compute the model."""


def _input_spec(workload: Workload, batch: int) -> tf.TensorSpec:
    return tf.TensorSpec((batch, *workload.event_shape), workload.dtype)


MID_DIM = 64
"""Input size of the ``mid`` MLP that the wire benchmark serves."""


def build_mid() -> keras.Model:
    """The ``mid`` MLP, 64 -> 256 -> 256 -> 1 (tanh), as ``hessd-server --model mid=bench_methods:build_mid`` loads it."""
    return build_mlp(MID_DIM)
