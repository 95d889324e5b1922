"""Optimizers over served (or in-process) models: hessd's exact derivatives for scipy,
CasADi/IPOPT and batched Newton.

* :class:`Objective`: a scalar function of one example's input with ``fun``, ``jac``,
  ``hess`` and ``hessp`` for ``scipy.optimize.minimize``;
* :class:`Constraint`: some of the model's outputs as nonlinear constraints, with
  :meth:`Constraint.scipy` for ``trust-constr``;
* :func:`casadi_function`: the outputs as a ``casadi.Function`` with exact Jacobian
  and Hessians, for ``casadi.nlpsol(..., "ipopt", ...)``;
* :func:`minimize_batch`: B problems by damped Newton in lockstep, one ``Evaluate``
  per iteration.

scipy (``pip install 'hessd[optimize]'``) and casadi (``'hessd[casadi]'``) are imported
only by the functions that need them; importing this package needs numpy alone.
"""

from hessd.optimize._batch import BatchResult, minimize_batch
from hessd.optimize._casadi_function import casadi_function
from hessd.optimize._constraint import Constraint
from hessd.optimize._objective import Objective

__all__ = ["BatchResult", "Constraint", "Objective", "casadi_function", "minimize_batch"]
