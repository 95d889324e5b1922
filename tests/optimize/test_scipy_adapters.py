"""``Objective`` and ``Constraint`` with scipy, over the wire and in-process: known optima,
exact derivatives, identical iterates and one ``Evaluate`` per new point."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import optimize

import hessd
from support.optimize_fixtures import Where
from hessd.optimize import Constraint, Objective
from support import optimize_models as om


def bowl_reference(x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Value, gradient and Hessian of ``support.optimize_models.Bowl`` in float64, by hand."""
    d = x - om.BOWL_CENTRE
    value = np.sum(np.log(np.cosh(d))) + 0.5 * d @ om.BOWL_MATRIX @ d
    return value, np.tanh(d) + om.BOWL_MATRIX @ d, np.diag(1.0 / np.cosh(d) ** 2) + om.BOWL_MATRIX


START = np.array([2.0, 1.5, -1.0, -2.0])


@pytest.mark.parametrize("method", ["Newton-CG", "trust-exact", "trust-constr", "trust-ncg"])
def test_the_known_minimizer_is_reached(where: Where, method: str) -> None:
    objective = Objective(*where.source("bowl"))
    hessian = {"hessp": objective.hessp} if method in ("Newton-CG", "trust-ncg") else {"hess": objective.hess}
    options = {"xtol": 1e-12} if method == "Newton-CG" else {"gtol": 1e-10}
    result = optimize.minimize(objective.fun, START, jac=objective.jac, method=method, options=options, **hessian)
    np.testing.assert_allclose(result.x, om.BOWL_CENTRE, atol=1e-7)
    assert objective.calls["HessianVectorProduct"] == 0  # every product used an evaluated point's Hessian


def test_value_gradient_hessian_and_products_are_the_model_s(where: Where) -> None:
    objective = Objective(*where.source("bowl"))
    for x in (START, om.BOWL_CENTRE + 0.3, np.linspace(-2, 2, 4)):
        value, gradient, hessian = bowl_reference(x)
        assert objective.fun(x) == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(objective.jac(x), gradient, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(objective.hess(x), hessian, rtol=1e-12, atol=1e-12)
        p = np.arange(1.0, 5.0)
        np.testing.assert_allclose(objective.hessp(x, p), hessian @ p, rtol=1e-12)


def test_a_product_at_a_point_not_evaluated_is_one_hessian_vector_product(where: Where) -> None:
    objective = Objective(*where.source("bowl"))
    p = np.array([1.0, -1.0, 0.5, 2.0])
    product = objective.hessp(START, p)
    np.testing.assert_allclose(product, bowl_reference(START)[2] @ p, rtol=1e-10)
    assert objective.calls == {"GetModelMetadata": 1, "HessianVectorProduct": 1}


def test_one_evaluate_per_new_point_and_none_for_a_point_seen(where: Where) -> None:
    objective = Objective(*where.source("bowl"))
    assert objective.calls == {"GetModelMetadata": 1}
    objective.fun(START)
    objective.jac(START)
    objective.hess(START)
    objective.hessp(START, np.ones(4))
    assert objective.calls["Evaluate"] == 1
    objective.jac(START + 1.0)
    assert objective.calls["Evaluate"] == 2
    objective.hess(START.tolist())  # the same point, as a list
    assert objective.calls == {"GetModelMetadata": 1, "Evaluate": 2}

    constraint = Constraint(*where.source("ball"), outputs=[1, 2], ub=1.0)
    x = np.array([0.1, 0.2, 0.3])
    constraint.fun(x)
    constraint.jac(x)
    constraint.hess(x, [0.5, 2.0])
    assert constraint.calls == {"GetModelMetadata": 1, "Evaluate": 1}


def test_the_same_iterates_in_process_and_over_the_wire(client: hessd.Client, in_process_models: dict[str, Any]) -> None:
    iterates = {}
    for kind in ("wire", "in_process"):
        objective = Objective(*Where(kind, client if kind == "wire" else None, in_process_models).source("bowl"))
        seen: list[np.ndarray] = []
        optimize.minimize(
            objective.fun,
            START,
            jac=objective.jac,
            hess=objective.hess,
            method="trust-exact",
            callback=lambda x: seen.append(np.copy(x)),
        )
        iterates[kind] = np.array(seen)
    assert len(iterates["wire"]) > 2
    np.testing.assert_array_equal(iterates["wire"], iterates["in_process"])


def test_constraint_values_jacobian_and_lagrangian_hessian_are_exact(where: Where) -> None:
    constraint = Constraint(*where.source("ball"), outputs=[0, 1, 2])
    x = np.array([0.3, -0.7, 1.1])
    np.testing.assert_allclose(
        constraint.fun(x), [0.5 * np.sum((x - om.TARGET) ** 2), x @ x, x.sum()], rtol=1e-12
    )
    np.testing.assert_allclose(constraint.jac(x), [x - om.TARGET, 2 * x, np.ones(3)], rtol=1e-12)
    v = np.array([0.5, -2.0, 7.0])
    np.testing.assert_allclose(constraint.hess(x, v), (0.5 * 1 - 2.0 * 2) * np.eye(3), atol=1e-12)


def test_the_known_kkt_point_is_reached_by_trust_constr(where: Where) -> None:
    source = where.source("ball")
    objective = Objective(*source, output_weights=[1.0, 0.0, 0.0])
    ball = Constraint(*source, outputs=1, ub=1.0)
    plane = Constraint(*source, outputs=[2], lb=om.PLANE_LEVEL, ub=om.PLANE_LEVEL)
    result = optimize.minimize(
        objective.fun,
        np.zeros(3),
        jac=objective.jac,
        hess=objective.hess,
        method="trust-constr",
        constraints=[ball.scipy(), plane.scipy()],
        options={"gtol": 1e-10, "xtol": 1e-12},
    )
    np.testing.assert_allclose(result.x, om.KKT_POINT, atol=1e-4)
    assert result.v[0] == pytest.approx([om.KKT_MULTIPLIER], abs=1e-3)


def test_multi_input_model_optimises_wrt_with_the_other_inputs_fixed(where: Where, client: hessd.Client) -> None:
    fixed = {"b": np.full((2, 2), 0.3), "ids": np.array([1, 4], np.int32)}
    objective = Objective(*where.source("multi"), wrt="a", inputs=fixed, output_weights=[1.0, -0.5])
    a = np.array([0.2, -0.1, 0.4])
    batch = {"a": a[None], "b": fixed["b"][None], "ids": fixed["ids"][None]}
    expected = client.evaluate("multi", batch, wrt="a", output_weights=[1.0, -0.5], precision="float64")
    assert objective.fun(a) == pytest.approx(float(expected.value[0]), rel=1e-12)
    np.testing.assert_allclose(objective.jac(a), expected.gradient[0], rtol=1e-12)
    np.testing.assert_allclose(objective.hess(a), expected.hessian[0], rtol=1e-12, atol=1e-15)
