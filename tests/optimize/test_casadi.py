"""``casadi_function`` over the wire and in-process: exact derivatives in CasADi's own
differentiation, and IPOPT reaching a known KKT point with the exact Lagrangian Hessian."""

from __future__ import annotations

import casadi
import numpy as np
import pytest

from support.optimize_fixtures import Where
from hessd.optimize import casadi_function
from support import optimize_models as om


def test_casadi_s_jacobian_and_hessian_are_the_model_s(where: Where) -> None:
    model = casadi_function(*where.source("ball"))
    x = casadi.MX.sym("x", 3)
    weights = casadi.MX.sym("w", 3)
    y = model(x)
    derivatives = casadi.Function(
        "derivatives", [x, weights], [y, casadi.jacobian(y, x), casadi.hessian(casadi.dot(weights, y), x)[0]]
    )
    point, w = np.array([0.3, -0.7, 1.1]), np.array([0.5, -2.0, 7.0])
    values, jacobian, hessian = (np.array(a) for a in derivatives(point, w))
    np.testing.assert_allclose(values.ravel(), [0.5 * np.sum((point - om.TARGET) ** 2), point @ point, point.sum()], rtol=1e-12)
    np.testing.assert_allclose(jacobian, [point - om.TARGET, 2 * point, np.ones(3)], rtol=1e-12)
    np.testing.assert_allclose(hessian, (0.5 - 2.0 * 2) * np.eye(3), atol=1e-12)
    assert model.calls == {"GetModelMetadata": 1, "Evaluate": 1}


def test_ipopt_reaches_the_known_kkt_point_with_the_exact_hessian(where: Where) -> None:
    model = casadi_function(*where.source("ball"))
    x = casadi.MX.sym("x", 3)
    y = model(x)
    solver = casadi.nlpsol(
        "ball",
        "ipopt",
        {"x": x, "f": y[0], "g": casadi.vertcat(y[1], y[2])},
        {"ipopt.print_level": 0, "print_time": False, "ipopt.tol": 1e-12, "ipopt.sb": "yes"},
    )
    result = solver(x0=[0.1, 0.1, 0.1], lbg=[-np.inf, om.PLANE_LEVEL], ubg=[1.0, om.PLANE_LEVEL])
    stats = solver.stats()
    assert stats["return_status"] == "Solve_Succeeded"
    np.testing.assert_allclose(np.array(result["x"]).ravel(), om.KKT_POINT, atol=1e-8)
    np.testing.assert_allclose(np.array(result["lam_g"]).ravel(), [om.KKT_MULTIPLIER, 0.0], atol=1e-7)
    assert stats["n_call_nlp_hess_l"] > 0  # IPOPT asked for the exact Lagrangian Hessian
    assert model.calls["Evaluate"] <= stats["n_call_nlp_f"] + stats["n_call_nlp_hess_l"] + 1


def test_ipopt_steps_back_from_a_point_where_the_model_is_not_finite(where: Where) -> None:
    model = casadi_function(*where.source("log"))
    x = casadi.MX.sym("x", 2)
    solver = casadi.nlpsol("log", "ipopt", {"x": x, "f": model(x)}, {"ipopt.print_level": 0, "print_time": False, "ipopt.sb": "yes"})
    result = solver(x0=[5.0, 5.0])  # the first Newton step lands at (-15, -15), where log is NaN
    assert solver.stats()["return_status"] == "Solve_Succeeded"
    np.testing.assert_allclose(np.array(result["x"]).ravel(), [1.0, 1.0], atol=1e-6)


def test_a_non_finite_value_fails_the_casadi_call_with_hessd_s_message(where: Where) -> None:
    model = casadi_function(*where.source("log"))
    with pytest.raises(RuntimeError, match="gave a non-finite value .* at x = \\[-1., +1.\\]"):
        model([-1.0, 1.0])
    np.testing.assert_allclose(np.array(model([1.0, 2.0])).ravel(), [1.0 + 2.0 - np.log(2.0)], rtol=1e-12)
