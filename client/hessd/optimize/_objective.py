"""``Objective``: a scalar function of one example's input, for scipy-style solvers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from hessd.errors import OutputWeightsError
from hessd.optimize._evaluations import PointEvaluations
from hessd.optimize._points import ModelInput, refuse_non_finite_result
from hessd.optimize._source import model_source


class Objective:
    """f(x) = sum_k w_k y_k(x) of one example, as a function of the flat input x (D values).

    x is input ``wrt`` (per-example shape S, D = prod(S) values) flattened row-major;
    the model's other inputs are held at ``inputs``. Value, gradient and Hessian at a
    point come from one ``Evaluate`` and are kept for that point, so a solver's
    ``fun``, ``jac`` and ``hess`` at one x cost one call between them, and a point
    seen recently costs none. ``hessp`` multiplies the kept Hessian, or asks the
    model for one ``HessianVectorProduct`` at a point not evaluated.

    >>> objective = Objective(client, "surrogate", output_weights=[1.0, 0.0])  # doctest: +SKIP
    >>> scipy.optimize.minimize(objective.fun, x0, jac=objective.jac,       # doctest: +SKIP
    ...                         hess=objective.hess, method="trust-exact")

    Args:
        source: a ``hessd.Client``, or an in-process ``hessd_server`` model
            (``hessd_server.load_model(...)``) or Keras model.
        model: the served model's name with a client; ``None`` in-process.
        output_weights: w, shape (K,) for the model's K outputs (flattened per
            example); ``None`` sums them all.
        wrt: the input x stands for; ``None`` for a single-input model.
        inputs: one example of every other input, by name, without a batch dimension.
        model_version: the served version to use; ``None`` for the newest AVAILABLE one.
        precision: ``"float64"`` (default; what solvers' tolerances expect) or ``"float32"``.

    ``calls`` counts the calls made, by RPC name (``"GetModelMetadata"``, ``"Evaluate"``,
    ``"HessianVectorProduct"``); in-process, the library calls that mirror them.

    Raises:
        InvalidArgumentError: and its subclasses for a bad source, ``wrt``,
            ``inputs``, point (wrong size: ``ShapeError``; NaN: ``NON_FINITE_INPUT``),
            or a non-finite model value, gradient or Hessian (``NON_FINITE_RESULT``),
            which stops the solver; any error of the model's calls as they raise it.
    """

    def __init__(
        self,
        source: Any,
        model: str | None = None,
        *,
        output_weights: npt.ArrayLike | None = None,
        wrt: str | None = None,
        inputs: Mapping[str, npt.ArrayLike] | None = None,
        model_version: str | None = None,
        precision: str = "float64",
    ) -> None:
        self._source = model_source(source, model, model_version)
        self._input = ModelInput(self._source.metadata(), wrt, inputs, precision)
        weights = None if output_weights is None else np.asarray(output_weights, self._input.dtype)
        if weights is not None and weights.ndim != 1:
            raise OutputWeightsError(
                f"output_weights of an Objective weight one example's outputs: shape (K,), not {weights.shape}",
                field="output_weights",
            )
        self._weights = weights
        self._evaluations = PointEvaluations(self._source, self._input, weights)

    @property
    def calls(self) -> Counter[str]:
        """Calls made so far, by RPC name."""
        return self._source.calls

    @property
    def size(self) -> int:
        """D, the number of values in x."""
        return self._input.size

    def fun(self, x: npt.ArrayLike) -> float:
        """f(x), a float."""
        return float(self._evaluations.at(x).values[0])

    def jac(self, x: npt.ArrayLike) -> np.ndarray:
        """The gradient of f at x, float64 (D,)."""
        return self._evaluations.at(x).jacobian[0].copy()

    def hess(self, x: npt.ArrayLike) -> np.ndarray:
        """The Hessian of f at x, float64 (D, D), symmetric."""
        return self._evaluations.at(x).hessians[0].copy()

    def hessp(self, x: npt.ArrayLike, p: npt.ArrayLike) -> np.ndarray:
        """The Hessian of f at x times p (D values): float64 (D,)."""
        direction = self._input.point(p, field="p")
        kept = self._evaluations.cached(x)
        if kept is not None:
            return kept.hessians[0] @ direction
        point = self._input.point(x)
        product = self._source.hvp(
            self._input.request(point[None]),
            direction.reshape(1, *self._input.shape),
            output_weights=self._weights,
            wrt=self._input.wrt,
            precision=self._input.precision,
        )
        flat = np.asarray(product, np.float64).reshape(self._input.size)
        refuse_non_finite_result(self._source.name, {"Hessian-vector product": flat}, "x")
        return flat
