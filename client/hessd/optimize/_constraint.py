"""``Constraint``: some of a model's outputs as nonlinear constraints lb <= y(x) <= ub."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hessd.errors import InvalidArgumentError
from hessd.optimize._evaluations import PointEvaluations
from hessd.optimize._points import ModelInput
from hessd.optimize._source import model_source


class Constraint:
    """The model's outputs numbered ``outputs`` as constraints lb <= c(x) <= ub on one example's input.

    c(x) = (y_{o_1}(x), ..., y_{o_m}(x)) for ``outputs`` = (o_1, ..., o_m), indices
    into the model's outputs flattened per example. Values, Jacobian and every
    output's Hessian at a point come from one ``Evaluate`` (the point sent as m
    examples, each weighting one output) and are kept for that point; the
    Lagrangian Hessian sum_i v_i d2 c_i / dx2 is then formed here, with no further call.

    >>> constraint = Constraint(client, "surrogate", outputs=[1], ub=0.5)  # doctest: +SKIP
    >>> scipy.optimize.minimize(..., method="trust-constr",                 # doctest: +SKIP
    ...                         constraints=[constraint.scipy()])

    Args:
        source: a ``hessd.Client``, or an in-process ``hessd_server`` model or Keras model.
        model: the served model's name with a client; ``None`` in-process.
        outputs: the outputs to constrain (m indices in [0, K)).
        lb: lower bounds, a number or m numbers; ``-inf`` for none.
        ub: upper bounds, likewise; ``inf`` for none. lb == ub makes an equality.
        wrt, inputs, model_version, precision: as for :class:`Objective`.

    Attributes:
        lb: the lower bounds, float64 (m,).
        ub: the upper bounds, float64 (m,).
    """

    def __init__(
        self,
        source: Any,
        model: str | None = None,
        *,
        outputs: int | Sequence[int],
        lb: npt.ArrayLike = -np.inf,
        ub: npt.ArrayLike = np.inf,
        wrt: str | None = None,
        inputs: Mapping[str, npt.ArrayLike] | None = None,
        model_version: str | None = None,
        precision: str = "float64",
    ) -> None:
        self._source = model_source(source, model, model_version)
        self._input = ModelInput(self._source.metadata(), wrt, inputs, precision)
        selector = self._input.output_selector(outputs)
        self._evaluations = PointEvaluations(self._source, self._input, selector)
        count = selector.shape[0]
        try:
            self.lb = np.broadcast_to(np.asarray(lb, np.float64), (count,)).copy()
            self.ub = np.broadcast_to(np.asarray(ub, np.float64), (count,)).copy()
        except ValueError as error:
            raise InvalidArgumentError(
                f"lb and ub must be a number or one per constrained output ({count}): {error}",
                field="lb",
                reason="BOUNDS_INVALID",
            ) from error
        if np.any(np.isnan(self.lb) | np.isnan(self.ub)) or np.any(self.lb > self.ub):
            raise InvalidArgumentError(
                f"every lower bound must be <= its upper bound and neither NaN: lb {self.lb}, ub {self.ub}",
                field="lb",
                reason="BOUNDS_INVALID",
            )

    @property
    def calls(self) -> Counter[str]:
        """Calls made so far, by RPC name, as ``Objective.calls``."""
        return self._source.calls

    def fun(self, x: npt.ArrayLike) -> np.ndarray:
        """c(x), float64 (m,)."""
        return self._evaluations.at(x).values.copy()

    def jac(self, x: npt.ArrayLike) -> np.ndarray:
        """dc/dx, float64 (m, D)."""
        return self._evaluations.at(x).jacobian.copy()

    def hess(self, x: npt.ArrayLike, v: npt.ArrayLike) -> np.ndarray:
        """The Lagrangian Hessian sum_i v_i d2 c_i / dx2 at x, float64 (D, D)."""
        hessians = self._evaluations.at(x).hessians
        weights = np.asarray(v, np.float64).reshape(-1)
        if weights.shape != hessians.shape[:1]:
            raise InvalidArgumentError(
                f"v needs one multiplier per constrained output ({hessians.shape[0]}), got {weights.size}",
                field="v",
                reason="MULTIPLIERS_MISMATCH",
            )
        return np.einsum("i,ijk->jk", weights, hessians)

    def scipy(self) -> Any:
        """A ``scipy.optimize.NonlinearConstraint`` with this constraint's exact Jacobian and
        Lagrangian Hessian (for ``method="trust-constr"``; SLSQP and COBYQA use ``fun`` and ``jac``)."""
        from scipy.optimize import NonlinearConstraint

        return NonlinearConstraint(self.fun, self.lb, self.ub, jac=self.jac, hess=self.hess)
