"""``minimize_batch`` over the wire and in-process: per-example scipy solutions, bounds,
one ``Evaluate`` per iteration, and the same result either way."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import optimize

import hessd
from support.optimize_fixtures import Where
from hessd.errors import InvalidArgumentError
from hessd.optimize import Objective, minimize_batch
from support import optimize_models as om

PROBLEMS = 6


def _starts(seed: int = 0) -> np.ndarray:
    return 3.0 * np.random.default_rng(seed).standard_normal((PROBLEMS, 4))


def _bounds() -> tuple[np.ndarray, np.ndarray]:
    """Per-problem boxes: the first two hold the unconstrained minimizer, the rest cut it off."""
    lower = np.tile([-5.0, -5.0, -5.0, -5.0], (PROBLEMS, 1))
    upper = np.tile([5.0, 5.0, 5.0, 5.0], (PROBLEMS, 1))
    lower[2:, 0] = [1.0, 2.0, 0.6, 1.5]
    upper[2:, 2] = [1.0, 0.0, 1.5, -0.5]
    return lower, upper


def test_unbounded_problems_reach_the_known_minimizer_in_one_evaluate_per_iteration(where: Where) -> None:
    result = minimize_batch(*where.source("bowl"), x0=_starts(), gtol=1e-9)
    assert result.success
    np.testing.assert_allclose(result.x, np.tile(om.BOWL_CENTRE, (PROBLEMS, 1)), atol=1e-8)
    assert result.calls == {"GetModelMetadata": 1, "Evaluate": 1 + result.iterations.max()}


def test_bounded_problems_match_per_example_scipy_solutions(where: Where) -> None:
    starts, (lower, upper) = _starts(1), _bounds()
    result = minimize_batch(*where.source("bowl"), x0=starts, bounds=(lower, upper), gtol=1e-9)
    assert result.success
    objective = Objective(*where.source("bowl"))
    for b in range(PROBLEMS):
        expected = optimize.minimize(
            objective.fun,
            np.clip(starts[b], lower[b], upper[b]),
            jac=objective.jac,
            hess=objective.hess,
            method="trust-constr",
            bounds=optimize.Bounds(lower[b], upper[b]),
            options={"gtol": 1e-12, "xtol": 1e-14},
        )
        np.testing.assert_allclose(result.x[b], expected.x, atol=1e-5)
        assert result.fun[b] <= expected.fun + 1e-10
    assert np.all((result.x >= lower) & (result.x <= upper))
    assert result.calls["Evaluate"] == 1 + result.iterations.max()


def test_per_problem_output_weights_and_negative_curvature(where: Where) -> None:
    # Problem 0 minimises |x - a|^2 / 2 (minimum at a), problem 1 the ball term |x|^2 (at 0),
    # problem 2 -|x|^2 inside a box, concave: each coordinate runs from 0 the way it
    # starts, to the corner (2, -1, 2), a local minimum.
    weights = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    starts = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [0.3, -0.2, 0.1]])
    result = minimize_batch(*where.source("ball"), x0=starts, output_weights=weights, bounds=(-1.0, 2.0), gtol=1e-10)
    assert result.success
    np.testing.assert_allclose(result.x[0], np.clip(om.TARGET, -1.0, 2.0), atol=1e-9)
    np.testing.assert_allclose(result.x[1], np.zeros(3), atol=1e-9)
    np.testing.assert_array_equal(result.x[2], [2.0, -1.0, 2.0])


def test_the_same_result_in_process_and_over_the_wire(client: hessd.Client, in_process_models: dict[str, Any]) -> None:
    wire = minimize_batch(client, "bowl", x0=_starts(2), bounds=_bounds())
    in_process = minimize_batch(in_process_models["bowl"], x0=_starts(2), bounds=_bounds())
    np.testing.assert_array_equal(wire.x, in_process.x)
    np.testing.assert_array_equal(wire.iterations, in_process.iterations)


def test_a_point_where_the_model_is_not_finite_stops_the_run_and_names_the_problem(where: Where) -> None:
    starts = np.array([[1.2, 0.9], [5.0, 5.0]])  # the second's first Newton step reaches (-15, -15)
    with pytest.raises(InvalidArgumentError, match="non-finite value .* problem 1's point") as caught:
        minimize_batch(*where.source("log"), x0=starts)
    assert caught.value.reason == "NON_FINITE_RESULT"
    within_domain = minimize_batch(*where.source("log"), x0=starts, bounds=(0.5, 10.0))
    np.testing.assert_allclose(within_domain.x, np.ones((2, 2)), atol=1e-7)


def test_max_iterations_leaves_unfinished_problems_not_converged(where: Where) -> None:
    result = minimize_batch(*where.source("bowl"), x0=_starts(), max_iterations=1)
    assert not result.success
    assert result.calls["Evaluate"] == 2
    assert np.all(result.iterations <= 1)


ROSENBROCK_STARTS = np.array(
    [[1.2, 1.2, 1.2, 1.2], [0.5, 0.5, 0.5, 0.5], [-0.5, 1.0, 0.3, -0.2], [0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.5, 1.0]]
)
"""Starts where the Rosenbrock Hessian is positive definite (the first and fourth) and where it is indefinite."""


def _rosenbrock_hessian(x: np.ndarray) -> np.ndarray:
    """The analytic Hessian of :class:`support.optimize_models.Rosenbrock` at x (D,), (D, D)."""
    hessian = np.zeros((x.size, x.size))
    for i in range(x.size - 1):
        hessian[i, i] += 1200.0 * x[i] ** 2 - 400.0 * x[i + 1] + 2.0
        hessian[i + 1, i + 1] += 200.0
        hessian[i, i + 1] = hessian[i + 1, i] = -400.0 * x[i]
    return hessian


@pytest.mark.parametrize("iterations", [1, 2, 4])
def test_each_problem_takes_the_steps_it_takes_alone(where: Where, iterations: int) -> None:
    # A problem's shift, and so its iterates, depend on its own Hessian only, whatever
    # the curvature of the others in the batch.
    together = minimize_batch(*where.source("rosenbrock"), x0=ROSENBROCK_STARTS, max_iterations=iterations)
    for b, start in enumerate(ROSENBROCK_STARTS):
        alone = minimize_batch(*where.source("rosenbrock"), x0=start[None], max_iterations=iterations)
        np.testing.assert_allclose(together.x[b], alone.x[0], rtol=1e-10, atol=1e-12)
        assert together.iterations[b] == alone.iterations[0]


def test_problems_that_start_at_negative_curvature_reach_local_minima(where: Where) -> None:
    result = minimize_batch(*where.source("rosenbrock"), x0=ROSENBROCK_STARTS, gtol=1e-9)
    assert result.success
    for x in result.x:
        assert np.linalg.eigvalsh(_rosenbrock_hessian(x))[0] > 0
    assert np.any(np.all(np.abs(result.x - 1.0) < 1e-8, axis=1))


def test_running_the_same_problems_again_compiles_nothing(where: Where) -> None:
    # Every iteration's batch (all problems, then fewer as they converge) runs in a bucket
    # compiled by the first run; a run that compiled again would pay it in every call.
    source, name = where.source("rosenbrock")
    first = minimize_batch(source, name, x0=ROSENBROCK_STARTS, gtol=1e-9)
    compiled = _metadata(where).compile_count
    again = minimize_batch(source, name, x0=ROSENBROCK_STARTS, gtol=1e-9)
    assert _metadata(where).compile_count == compiled
    assert again.calls["Evaluate"] == first.calls["Evaluate"] > 2


def _metadata(where: Where) -> hessd.ModelMetadata:
    if where.client is not None:
        return where.client.metadata("rosenbrock")
    return where.models["rosenbrock"].metadata()
