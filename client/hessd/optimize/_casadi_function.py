"""``casadi_function``: a model's outputs as a ``casadi.Function`` (the ``casadi`` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy.typing as npt

from hessd.optimize._evaluations import PointEvaluations
from hessd.optimize._points import ModelInput
from hessd.optimize._source import model_source


def casadi_function(
    source: Any,
    model: str | None = None,
    *,
    outputs: int | Sequence[int] | None = None,
    wrt: str | None = None,
    inputs: Mapping[str, npt.ArrayLike] | None = None,
    model_version: str | None = None,
    precision: str = "float64",
    name: str = "hessd_model",
) -> Any:
    """The model's outputs as a ``casadi.Function`` c: x (D, 1) -> (m, 1) with hessd's exact derivatives.

    Its Jacobian and Hessians are the model's exact ones (a ``casadi.Callback``
    whose ``get_jacobian`` chain ends in hessd's Hessian blocks), so
    ``casadi.nlpsol(..., "ipopt", ...)`` over expressions of c solves with the exact
    Lagrangian Hessian (IPOPT's default ``hessian_approximation = exact``). Values,
    Jacobian and Hessians at a point come from one ``Evaluate``, kept for that point.
    Call it on ``casadi.MX`` symbols (a callback cannot be expanded into ``SX``).

    >>> c = casadi_function(client, "surrogate", outputs=[0, 1])            # doctest: +SKIP
    >>> x = casadi.MX.sym("x", c.size1_in(0))                              # doctest: +SKIP
    >>> y = c(x)                                                           # doctest: +SKIP
    >>> solver = casadi.nlpsol("s", "ipopt", {"x": x, "f": y[0], "g": y[1]})  # doctest: +SKIP

    Args:
        source: a ``hessd.Client``, or an in-process ``hessd_server`` model or Keras model.
        model: the served model's name with a client; ``None`` in-process.
        outputs: the outputs c holds (indices into the K outputs flattened per
            example); ``None`` for all K.
        wrt, inputs, model_version, precision: as for :class:`Objective`.
        name: the CasADi function's name.

    Returns:
        A ``casadi.Function`` (keep a reference to it while CasADi uses it) with a
        ``calls`` attribute counting the calls made, by RPC name. An error of the
        model (a non-finite result: ``NON_FINITE_RESULT``) fails the CasADi call
        that needed it, with the hessd message in CasADi's error.

    Raises:
        ImportError: casadi is not installed (``pip install 'hessd[casadi]'``).
        InvalidArgumentError: a bad source, ``wrt``, ``inputs`` or ``outputs``.
    """
    from hessd.optimize._casadi_callback import OUTPUTS, ModelCallback

    model_source_ = model_source(source, model, model_version)
    model_input = ModelInput(model_source_.metadata(), wrt, inputs, precision)
    chosen = range(model_input.output_size) if outputs is None else outputs
    evaluations = PointEvaluations(model_source_, model_input, model_input.output_selector(chosen))
    return ModelCallback(name, evaluations, OUTPUTS, {"enable_fd": False})
