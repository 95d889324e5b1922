"""What an unlucky or careless caller of ``hessd.optimize`` meets: clear ``hessd`` errors,
raised before any call where they can be, and a server that keeps serving."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import optimize

import hessd
from support.optimize_fixtures import Where
from hessd.optimize import Constraint, Objective, casadi_function, minimize_batch


def test_a_point_of_the_wrong_size_is_refused_before_any_call(where: Where) -> None:
    objective = Objective(*where.source("bowl"))
    with pytest.raises(hessd.ShapeError, match="x has 3 values; input 'x' of model 'bowl' has shape \\(4,\\)") as caught:
        objective.fun(np.zeros(3))
    assert (caught.value.field, caught.value.metadata) == ("x", {"expected_size": "4", "actual_size": "3"})
    with pytest.raises(hessd.ShapeError, match="p has 5 values"):
        objective.hessp(np.zeros(4), np.zeros(5))
    with pytest.raises(hessd.ShapeError, match="x0 has 3 values per problem"):
        minimize_batch(*where.source("bowl"), x0=np.zeros((2, 3)))
    assert objective.calls == {"GetModelMetadata": 1}


def test_nan_in_a_point_is_refused_before_any_call(where: Where) -> None:
    objective = Objective(*where.source("bowl"))
    with pytest.raises(hessd.InvalidArgumentError, match="x holds 1 NaN") as caught:
        objective.jac([0.0, np.nan, 0.0, 0.0])
    assert (caught.value.reason, caught.value.field) == ("NON_FINITE_INPUT", "x")
    with pytest.raises(hessd.InvalidArgumentError, match="x0 holds 2 NaN or infinite"):
        minimize_batch(*where.source("bowl"), x0=np.array([[np.nan, 0, 0, 0], [0, 0, np.inf, 0]]))
    assert objective.calls == {"GetModelMetadata": 1}


def test_a_non_finite_model_value_stops_scipy_with_a_clear_message(where: Where) -> None:
    objective = Objective(*where.source("log"))
    with pytest.raises(hessd.InvalidArgumentError, match="model '(log|log_barrier)' gave a non-finite value") as caught:
        optimize.minimize(objective.fun, [5.0, 5.0], jac=objective.jac, hess=objective.hess, method="Newton-CG")
    assert caught.value.reason == "NON_FINITE_RESULT"
    assert caught.value.metadata == {"quantity": "value"}
    assert objective.fun([1.0, 1.0]) == pytest.approx(2.0)  # and the model still answers


def test_an_output_the_model_does_not_have_is_refused(where: Where) -> None:
    with pytest.raises(hessd.OutputWeightsError, match="model 'ball' has 3 outputs .* no output 3") as caught:
        Constraint(*where.source("ball"), outputs=[1, 3], ub=1.0)
    assert (caught.value.reason, caught.value.field) == ("OUTPUT_INDEX_OUT_OF_RANGE", "outputs")
    with pytest.raises(hessd.OutputWeightsError, match="integer indices"):
        casadi_function(*where.source("ball"), outputs=[0.5])
    with pytest.raises(hessd.OutputWeightsError, match="no output -1"):
        casadi_function(*where.source("ball"), outputs=-1)


def test_output_weights_of_the_wrong_length_are_the_model_s_error(where: Where) -> None:
    objective = Objective(*where.source("ball"), output_weights=[1.0, 2.0])
    with pytest.raises(hessd.OutputWeightsError):
        objective.fun(np.zeros(3))
    with pytest.raises(hessd.OutputWeightsError, match="shape \\(K,\\)"):
        Objective(*where.source("ball"), output_weights=np.ones((2, 3)))


def test_bad_bounds_and_multipliers_are_refused(where: Where) -> None:
    with pytest.raises(hessd.InvalidArgumentError, match="lower bound must be <= its upper bound") as caught:
        Constraint(*where.source("ball"), outputs=[1], lb=2.0, ub=1.0)
    assert caught.value.reason == "BOUNDS_INVALID"
    with pytest.raises(hessd.InvalidArgumentError, match="one per constrained output \\(2\\)"):
        Constraint(*where.source("ball"), outputs=[1, 2], ub=[1.0, 2.0, 3.0])
    with pytest.raises(hessd.InvalidArgumentError, match="bounds must be \\(lb, ub\\)"):
        minimize_batch(*where.source("bowl"), x0=np.zeros((2, 4)), bounds=(np.zeros(3), 1.0))
    with pytest.raises(hessd.InvalidArgumentError, match="lower bound must be <= its upper bound"):
        minimize_batch(*where.source("bowl"), x0=np.zeros((2, 4)), bounds=(1.0, 0.0))
    constraint = Constraint(*where.source("ball"), outputs=[1, 2])
    with pytest.raises(hessd.InvalidArgumentError, match="one multiplier per constrained output \\(2\\), got 3") as caught:
        constraint.hess(np.zeros(3), [1.0, 2.0, 3.0])
    assert caught.value.reason == "MULTIPLIERS_MISMATCH"


def test_wrt_and_inputs_must_fit_the_model(where: Where) -> None:
    with pytest.raises(hessd.UnknownInputError, match="has inputs \\['a', 'b', 'ids'\\]: name the one"):
        Objective(*where.source("multi"))
    with pytest.raises(hessd.UnknownInputError, match="has no input 'c'"):
        Objective(*where.source("multi"), wrt="c")
    with pytest.raises(hessd.UnknownInputError, match="missing \\['ids'\\], not expected \\['z'\\]"):
        Objective(*where.source("multi"), wrt="a", inputs={"b": np.zeros((2, 2)), "z": 1.0})
    with pytest.raises(hessd.ShapeError, match="one example per problem, shape \\(2, ...\\)"):
        minimize_batch(*where.source("multi"), wrt="a", x0=np.zeros((2, 3)), inputs={"b": np.zeros((3, 2, 2)), "ids": np.zeros((2, 2), np.int32)})


def test_a_source_that_is_neither_a_client_nor_a_model_is_refused(client: hessd.Client, in_process_models: dict[str, Any]) -> None:
    with pytest.raises(hessd.InvalidArgumentError, match="source must be a hessd.Client or an in-process model") as caught:
        Objective("127.0.0.1:50051", "bowl")
    assert caught.value.reason == "UNSUPPORTED_SOURCE"
    with pytest.raises(hessd.InvalidArgumentError, match="model must name a served model"):
        Objective(client)
    with pytest.raises(hessd.InvalidArgumentError, match="leave model and model_version out"):
        Objective(in_process_models["bowl"], "bowl")
    with pytest.raises(hessd.ModelNotFoundError):
        Objective(client, "no_such_model")
    with pytest.raises(hessd.InvalidArgumentError, match="precision must be 'float32' or 'float64'"):
        Objective(client, "bowl", precision="float16")
    assert Objective(client, "bowl").fun(np.zeros(4)) > 0  # the server still serves
