"""Weighted sums of a model's outputs at one point, from one ``Evaluate``, cached per point.

Solvers ask for the value, the gradient and the Hessian at the same point in separate
calls (scipy's ``fun``, ``jac``, ``hess``; IPOPT's objective, constraints and Lagrangian
Hessian). :class:`PointEvaluations` answers all of them from one ``Evaluate`` per new point.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

from hessd.optimize._points import ModelInput, refuse_non_finite_result
from hessd.optimize._source import ModelSource

CACHED_POINTS = 8
"""Points whose evaluations are kept; a solver returning to a recent point costs no call."""


class PointEvaluation(NamedTuple):
    """n weighted sums s_i = sum_k W[i, k] y_k of the outputs y at one point x (D values), as
    read-only float64 arrays (kept for the point; copy one to change it).

    Attributes:
        values: s_i(x), shape (n,).
        jacobian: ds_i/dx, shape (n, D).
        hessians: d2 s_i / dx2, shape (n, D, D).
    """

    values: np.ndarray
    jacobian: np.ndarray
    hessians: np.ndarray


class PointEvaluations:
    """:class:`PointEvaluation` of fixed output weights at any point, one ``Evaluate`` per new point.

    The point is sent as n identical examples, example i weighted by row i of
    ``weights``, so every sum's value, gradient and Hessian comes from one call.

    Args:
        source: where the model is computed.
        model_input: the optimised input and the fixed others.
        weights: output weights (n, K); or (K,), or ``None`` (all ones), for one sum.
    """

    def __init__(self, source: ModelSource, model_input: ModelInput, weights: Any) -> None:
        self.source = source
        self.model_input = model_input
        self._weights = None if weights is None else np.asarray(weights)
        self.count = 1 if self._weights is None or self._weights.ndim < 2 else self._weights.shape[0]
        self._cache: OrderedDict[bytes, PointEvaluation] = OrderedDict()

    def at(self, x: Any) -> PointEvaluation:
        """The sums' values, Jacobian and Hessians at ``x`` (D values); checked finite."""
        point = self.model_input.point(x)
        key = point.tobytes()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        rows = np.broadcast_to(point, (self.count, point.size))
        evaluation = self.source.evaluate(
            self.model_input.request(rows),
            output_weights=self._weights,
            wrt=self.model_input.wrt,
            precision=self.model_input.precision,
        )
        values, jacobian, hessians = self.model_input.flat_evaluation(evaluation)
        refuse_non_finite_result(
            self.source.name, {"value": values, "gradient": jacobian, "Hessian": hessians}, _where(point)
        )
        for array in (values, jacobian, hessians):
            array.flags.writeable = False
        result = PointEvaluation(values, jacobian, hessians)
        self._cache[key] = result
        if len(self._cache) > CACHED_POINTS:
            self._cache.popitem(last=False)
        return result

    def cached(self, x: Any) -> PointEvaluation | None:
        """The evaluation at ``x`` if it is cached, else ``None``; never calls."""
        return self._cache.get(self.model_input.point(x).tobytes())


def _where(point: np.ndarray) -> str:
    """A point for an error message, shortened past 8 values."""
    shown = np.array2string(point[:8], precision=6, separator=", ")
    return f"x = {shown[:-1]}, …] ({point.size} values)" if point.size > 8 else f"x = {shown}"
