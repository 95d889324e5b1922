"""Models with known optima for the optimizer tests, built from custom layers.

Servers load them as ``"support.optimize_models:<factory>"`` (``tests/`` is on ``sys.path``),
the in-process tests through ``hessd_server.load_model`` with the same string.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

BOWL_CENTRE = np.array([0.5, -1.0, 2.0, 0.25])
"""The minimizer of :func:`bowl_model`."""
BOWL_MATRIX = np.array(
    [[3.0, 0.5, 0.0, 0.2], [0.5, 2.0, 0.3, 0.0], [0.0, 0.3, 1.5, 0.4], [0.2, 0.0, 0.4, 1.0]]
)
"""The positive definite A of :func:`bowl_model`'s quadratic part."""

TARGET = np.array([1.5, 2.0, 0.0])
"""a of :func:`constrained_model`; minimising |x - a|^2 / 2 over |x|^2 <= 1 gives a / |a|."""
KKT_POINT = TARGET / np.linalg.norm(TARGET)
"""(0.6, 0.8, 0): the solution of :func:`constrained_model`'s problem."""
KKT_MULTIPLIER = (np.linalg.norm(TARGET) - 1.0) / 2.0
"""0.75: the multiplier of the ball constraint |x|^2 <= 1 at :data:`KKT_POINT`."""
PLANE_LEVEL = float(KKT_POINT.sum())
"""1.4: the equality x_0 + x_1 + x_2 = 1.4 holds at :data:`KKT_POINT` (with multiplier 0)."""


class Bowl(keras.layers.Layer):
    """f(x) = sum_i log cosh(x_i - c_i) + (x - c)^T A (x - c) / 2 per example: (B, 4) -> (B, 1).

    Strictly convex, minimised at c = :data:`BOWL_CENTRE`, and not quadratic, so
    Newton needs several steps from afar."""

    def call(self, x: Any) -> Any:
        d = x - keras.ops.convert_to_tensor(BOWL_CENTRE, x.dtype)
        quadratic = 0.5 * keras.ops.sum(d * keras.ops.matmul(d, keras.ops.convert_to_tensor(BOWL_MATRIX, x.dtype)), axis=-1)
        return keras.ops.expand_dims(keras.ops.sum(keras.ops.log(keras.ops.cosh(d)), axis=-1) + quadratic, -1)

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor((x.shape[0], 1), x.dtype)


class BallProblem(keras.layers.Layer):
    """(B, 3) -> (B, 3): |x - a|^2 / 2, |x|^2 and x_0 + x_1 + x_2, with a = :data:`TARGET`."""

    def call(self, x: Any) -> Any:
        d = x - keras.ops.convert_to_tensor(TARGET, x.dtype)
        return keras.ops.stack(
            [0.5 * keras.ops.sum(d * d, axis=-1), keras.ops.sum(x * x, axis=-1), keras.ops.sum(x, axis=-1)], axis=-1
        )

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor((x.shape[0], 3), x.dtype)


class LogBarrier(keras.layers.Layer):
    """f(x) = sum_i (x_i - log x_i) per example, (B, 2) -> (B, 1): minimised at (1, 1),
    NaN wherever some x_i < 0."""

    def call(self, x: Any) -> Any:
        return keras.ops.sum(x - keras.ops.log(x), axis=-1, keepdims=True)

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor((x.shape[0], 1), x.dtype)


class Rosenbrock(keras.layers.Layer):
    """f(x) = sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 per example, (B, D) -> (B, 1):
    minimised at (1, ..., 1); its Hessian is indefinite at many points (at (0.5, ..., 0.5)
    for one) and positive definite at others (at (1.2, ..., 1.2))."""

    def call(self, x: Any) -> Any:
        head, tail = x[:, :-1], x[:, 1:]
        terms = 100.0 * keras.ops.square(tail - keras.ops.square(head)) + keras.ops.square(1.0 - head)
        return keras.ops.sum(terms, axis=-1, keepdims=True)

    def compute_output_spec(self, x: Any) -> Any:
        return keras.KerasTensor((x.shape[0], 1), x.dtype)


def bowl_model() -> keras.Model:
    """:class:`Bowl` on inputs of shape (4,)."""
    inputs = keras.Input((4,), name="x")
    return keras.Model(inputs, Bowl()(inputs), name="bowl")


def constrained_model() -> keras.Model:
    """:class:`BallProblem` on inputs of shape (3,): objective and two constraints."""
    inputs = keras.Input((3,), name="x")
    return keras.Model(inputs, BallProblem()(inputs), name="ball")


def log_model() -> keras.Model:
    """:class:`LogBarrier` on inputs of shape (2,)."""
    inputs = keras.Input((2,), name="x")
    return keras.Model(inputs, LogBarrier()(inputs), name="log_barrier")


def rosenbrock_model() -> keras.Model:
    """:class:`Rosenbrock` on inputs of shape (4,)."""
    inputs = keras.Input((4,), name="x")
    return keras.Model(inputs, Rosenbrock()(inputs), name="rosenbrock")
