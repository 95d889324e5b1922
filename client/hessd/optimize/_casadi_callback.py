"""A model's outputs as a ``casadi.Callback`` with exact first and second derivatives.

Imported only by :func:`hessd.optimize.casadi_function`, since it imports casadi.
CasADi differentiates a callback through the function its ``get_jacobian`` returns, so
three callbacks stand in a chain: the outputs c(x) (m,), their Jacobian (m, D), and the
Jacobian's Jacobian, the m Hessians. All three read the same :class:`PointEvaluations`,
so IPOPT's objective, constraints, Jacobian and Lagrangian Hessian at one point cost
one ``Evaluate``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import casadi
import numpy as np

from hessd.optimize._evaluations import PointEvaluations

OUTPUTS, JACOBIAN, HESSIANS = 0, 1, 2


class ModelCallback(casadi.Callback):
    """One link of the chain: ``order`` 0 computes c(x), 1 its Jacobian, 2 the Hessians.

    Inputs: x (D,) and, for the derivatives, the nominal outputs of the function
    differentiated (which they ignore). Outputs: c (m,); the Jacobian (m, D); the
    Jacobian of the Jacobian, flattened column-major as CasADi does, ((m·D), D), with
    an empty ((m·D), m) block for the nominal outputs.
    """

    def __init__(self, name: str, evaluations: PointEvaluations, order: int, options: dict[str, Any]) -> None:
        casadi.Callback.__init__(self)
        self._evaluations = evaluations
        self._order = order
        self._size = evaluations.model_input.size
        self._count = evaluations.count
        self._derivative: ModelCallback | None = None
        self.construct(name, options)

    @property
    def calls(self) -> Counter[str]:
        """Calls made so far, by RPC name, as ``Objective.calls``."""
        return self._evaluations.source.calls

    def get_n_in(self) -> int:
        return (1, 2, 3)[self._order]

    def get_n_out(self) -> int:
        return (1, 1, 2)[self._order]

    def get_sparsity_in(self, index: int) -> casadi.Sparsity:
        m, d = self._count, self._size
        return casadi.Sparsity.dense(*((d, 1), (m, 1), (m, d))[index])

    def get_sparsity_out(self, index: int) -> casadi.Sparsity:
        m, d = self._count, self._size
        if self._order == OUTPUTS:
            return casadi.Sparsity.dense(m, 1)
        if self._order == JACOBIAN:
            return casadi.Sparsity.dense(m, d)
        return casadi.Sparsity.dense(m * d, d) if index == 0 else casadi.Sparsity(m * d, m)

    def eval(self, arguments: list[Any]) -> list[Any]:
        evaluation = self._evaluations.at(np.asarray(arguments[0], np.float64).reshape(-1))
        if self._order == OUTPUTS:
            return [casadi.DM(evaluation.values)]
        if self._order == JACOBIAN:
            return [casadi.DM(evaluation.jacobian)]
        m, d = self._count, self._size
        # Row i + m*j of d vec(J) / dx is d2 c_i / dx_j dx, CasADi's column-major vec.
        stacked = np.transpose(evaluation.hessians, (1, 0, 2)).reshape(d * m, d)
        return [casadi.DM(stacked), casadi.DM(m * d, m)]

    def has_jacobian(self) -> bool:
        return self._order < HESSIANS

    def get_jacobian(self, name: str, inames: list[str], onames: list[str], options: dict[str, Any]) -> casadi.Function:
        self._derivative = ModelCallback(name, self._evaluations, self._order + 1, options)
        return self._derivative
