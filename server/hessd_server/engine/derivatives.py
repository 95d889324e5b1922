"""The differentiation itself, in TensorFlow, free of caching and validation.

Every function here differentiates the scalar

    f = sum_b f_b,   f_b = sum_k w[b, k] * y[b, k],   y = forward(x) of shape (B, K)

with respect to ``x`` of shape (B, *S). ``forward`` maps the differentiated
input (and the inputs held fixed, already bound) to the model's outputs
flattened per example. Unconnected gradients are zeros, so a model whose
Hessian vanishes (linear, ReLU) gives exact zeros rather than ``None``.
They are meant to be traced inside ``tf.function``.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

Forward = Callable[[tf.Tensor], tf.Tensor]
"""x (B, *S) -> y (B, K), the model's outputs flattened per example."""

_ZERO = tf.UnconnectedGradients.ZERO


def _values(forward: Forward, x: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """f_b = sum_k w[b, k] y[b, k], shape (B,)."""
    return tf.reduce_sum(forward(x) * weights, axis=1)


def value_and_gradient(forward: Forward, x: tf.Tensor, weights: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns f_b (B,) and df/dx (B, *S)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        values = _values(forward, x, weights)
        total = tf.reduce_sum(values)
    return values, tape.gradient(total, x, unconnected_gradients=_ZERO)


def hessian_vector_product(forward: Forward, x: tf.Tensor, weights: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
    """Reverse-over-reverse d(grad f . v)/dx, shape (B, *S): per example H_b v_b
    when examples are independent, the full product H v otherwise."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        _, grad = value_and_gradient(forward, x, weights)
        projected = tf.reduce_sum(grad * v)
    return outer.gradient(projected, x, unconnected_gradients=_ZERO)


def per_example_hessian_pfor(
    forward: Forward, x: tf.Tensor, weights: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-example blocks by a vectorized (pfor) ``batch_jacobian`` of the gradient.

    Returns values (B,), gradient (B, *S) and Hessian blocks (B, *S, *S).
    """
    with tf.GradientTape() as outer:
        outer.watch(x)
        values, grad = value_and_gradient(forward, x, weights)
    blocks = outer.batch_jacobian(grad, x, unconnected_gradients=_ZERO, experimental_use_pfor=True)
    return values, grad, blocks


def per_example_hessian_tiled(
    forward: Forward, x: tf.Tensor, weights: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-example blocks without pfor: the batch is tiled D = prod(S) times and
    one reverse-over-reverse pass uses the identity as cotangents, so copy i of
    example b yields row i of H_b. Works where pfor cannot convert the model
    (recurrent layers). Same returns as :func:`per_example_hessian_pfor`.
    """
    tiled = _Tiled(x, weights)
    with tf.GradientTape() as outer:
        outer.watch(tiled.x)
        tiled_values, tiled_grad = value_and_gradient(forward, tiled.x, tiled.weights)
        projected = tf.reduce_sum(tiled_grad * tiled.identity)
    rows = outer.gradient(projected, tiled.x, unconnected_gradients=_ZERO)
    return tiled.untile(tiled_values, tiled_grad, rows)


def per_example_hessian_forward_over_reverse(
    forward: Forward, x: tf.Tensor, weights: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-example blocks by forward-mode differentiation of the gradient on the
    tiled batch: copy i of example b carries the tangent e_i, so the gradient's
    Jacobian-vector product at that copy is row i of H_b. No pfor; the layout
    of JAX's ``vmap(jacfwd(jacrev(f)))``. Same returns as
    :func:`per_example_hessian_pfor`.
    """
    tiled = _Tiled(x, weights)
    with tf.autodiff.ForwardAccumulator(tiled.x, tiled.identity) as accumulator:
        tiled_values, tiled_grad = value_and_gradient(forward, tiled.x, tiled.weights)
    rows = accumulator.jvp(tiled_grad, unconnected_gradients=_ZERO)
    return tiled.untile(tiled_values, tiled_grad, rows)


class _Tiled:
    """x (B, *S) repeated D = prod(S) times as (D*B, *S), copy i first, with
    the weights repeated alike and the identity laid out the same way: the
    entry of copy i at flat position j is 1 when i == j."""

    def __init__(self, x: tf.Tensor, weights: tf.Tensor) -> None:
        self.batch = tf.shape(x)[0]
        self.event_shape = tf.shape(x)[1:]
        self.dim = tf.reduce_prod(self.event_shape)
        self.x = tf.tile(x, tf.concat([[self.dim], tf.ones_like(self.event_shape)], axis=0))
        self.weights = tf.tile(weights, [self.dim, 1])
        identity = tf.reshape(tf.eye(self.dim, dtype=x.dtype), [self.dim, 1, self.dim])
        self.identity = tf.reshape(tf.broadcast_to(identity, [self.dim, self.batch, self.dim]), tf.shape(self.x))

    def untile(
        self, tiled_values: tf.Tensor, tiled_grad: tf.Tensor, rows: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Values (B,), gradient (B, *S) and blocks (B, *S, *S) from the tiled
        results, whose copy i of example b holds row i of H_b in ``rows``."""
        blocks = tf.transpose(tf.reshape(rows, [self.dim, self.batch, self.dim]), [1, 0, 2])
        full_shape = tf.concat([[self.batch], self.event_shape, self.event_shape], axis=0)
        return tiled_values[: self.batch], tiled_grad[: self.batch], tf.reshape(blocks, full_shape)


def full_hessian(
    forward: Forward, x: tf.Tensor, weights: tf.Tensor, *, use_pfor: bool
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The whole Hessian d^2 f / dx dx, shape (B, *S, B, *S), as ``tf.hessians``
    returns it; ``use_pfor=False`` loops over rows instead of vectorizing.

    Returns values (B,), gradient (B, *S) and the Hessian.
    """
    with tf.GradientTape(persistent=not use_pfor) as outer:
        outer.watch(x)
        values, grad = value_and_gradient(forward, x, weights)
    hessian = outer.jacobian(grad, x, unconnected_gradients=_ZERO, experimental_use_pfor=use_pfor)
    return values, grad, hessian


def flatten_outputs(outputs: object, dtype: tf.DType) -> tf.Tensor:
    """Any nest of (B, ...) model outputs -> one (B, K) tensor of ``dtype``,
    each output flattened per example and concatenated in nest order."""
    flat = [tf.reshape(tf.cast(t, dtype), [tf.shape(t)[0], -1]) for t in tf.nest.flatten(outputs)]
    return flat[0] if len(flat) == 1 else tf.concat(flat, axis=1)
