"""``minimize_batch``: B independent problems over one model, solved in lockstep.

Each problem minimises f_b(x_b) = sum_k w_k y_k(x_b) over one example's input by
Newton's method with a shift of the Hessian's diagonal that acts as a trust region: the
step solves (H_b + mu_b I) s = -g_b, where mu_b is the problem's shift, raised where
needed (by Cholesky factorisations, not eigenvalues) until the shifted Hessian is
positive definite. The shift grows when a step does not pay (ratio of actual to
predicted decrease under 1/4) and shrinks when it does (over 3/4), so steps near a
minimum are pure Newton steps. Every iteration sends the trial points of all unfinished
problems in one ``Evaluate``: their values, gradients and per-example Hessian blocks.

Bounds are kept by projection: variables at a bound that the gradient pushes outward are
held, the Newton step is taken in the others, and the trial point is clipped to the box.
A problem has converged when its projected gradient, x - clip(x - g, lb, ub), is at most
``gtol`` in every component.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hessd.errors import InvalidArgumentError, ShapeError
from hessd.optimize._points import ModelInput, refuse_non_finite_input, refuse_non_finite_result
from hessd.optimize._shifts import positive_definite_shifts
from hessd.optimize._source import ModelSource, model_source

ACCEPT_RATIO = 1e-4
"""A step is taken when the actual decrease is at least this share of the predicted one."""
SHRINK_RATIO, GROW_RATIO = 0.25, 0.75
"""Below SHRINK_RATIO the shift grows (shorter steps); above GROW_RATIO it shrinks."""
INITIAL_SHIFT = 1e-3
ROUNDING = 1e-13
"""Decreases within this share of |f| (plus as much absolute) are taken as rounding."""
ACTIVE_SET_WIDTH = 1e-3
"""A variable nearer a bound than this (and than the projected gradient's size) that the
gradient pushes outward is held there for the step."""
MAX_SHIFT = 1e12
"""A problem whose shift passes this made no progress: it stops, not converged."""


@dataclass(frozen=True)
class BatchResult:
    """What :func:`minimize_batch` found, for B problems of inputs of per-example shape S.

    Attributes:
        x: the last accepted point of each problem, float64 (B, *S).
        fun: f_b there, float64 (B,).
        gradient: its gradient there, float64 (B, *S).
        converged: whether each problem's projected gradient reached ``gtol``, bool (B,).
        iterations: the iterations each problem took part in, int (B,).
        calls: calls made, by RPC name: one ``Evaluate`` at the start and one per iteration.
    """

    x: np.ndarray
    fun: np.ndarray
    gradient: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    calls: Counter[str]

    @property
    def success(self) -> bool:
        """Whether every problem converged."""
        return bool(np.all(self.converged))


def minimize_batch(
    source: Any,
    model: str | None = None,
    *,
    x0: npt.ArrayLike,
    output_weights: npt.ArrayLike | None = None,
    wrt: str | None = None,
    inputs: Mapping[str, npt.ArrayLike] | None = None,
    bounds: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    gtol: float = 1e-6,
    max_iterations: int = 100,
    model_version: str | None = None,
    precision: str = "float64",
) -> BatchResult:
    """Minimise f_b(x) = sum_k w_k y_k(x) from each of B starting points, one ``Evaluate`` per iteration.

    See the module's description for the method. Problem b starts at ``x0[b]`` and
    may have its own fixed inputs (``inputs[name][b]``), output weights
    (``output_weights[b]``) and bounds (``bounds[0][b]``, ``bounds[1][b]``).

    >>> result = minimize_batch(client, "surrogate", x0=np.zeros((256, 16)))  # doctest: +SKIP
    >>> result.converged.all(), result.x.shape, result.calls["Evaluate"]    # doctest: +SKIP
    (True, (256, 16), 9)

    Args:
        source: a ``hessd.Client``, or an in-process ``hessd_server`` model or Keras model.
        model: the served model's name with a client; ``None`` in-process.
        x0: starting points (B, *S), or (B, D) flattened.
        output_weights: w, shape (K,) or (B, K); ``None`` sums every output.
        wrt: the input to optimise over; ``None`` for a single-input model.
        inputs: every other input, by name, one example per problem: shape (B, ...).
        bounds: ``(lb, ub)``, each broadcastable to (B, D) (a number, (D,) or (B, D));
            ``-inf``/``inf`` for none; ``None`` for no bounds.
        gtol: convergence tolerance on the projected gradient's largest component.
        max_iterations: at most this many iterations (each one ``Evaluate``).
        model_version: the served version to use; ``None`` for the newest AVAILABLE one.
        precision: ``"float64"`` (default) or ``"float32"``.

    Raises:
        InvalidArgumentError: and its subclasses for a bad source, shape, bound or
            tolerance, a NaN in ``x0`` (``NON_FINITE_INPUT``), or a non-finite value,
            gradient or Hessian at a point tried (``NON_FINITE_RESULT``), which stops
            the run; any error of the model's calls as they raise it.
    """
    points = np.asarray(x0, np.float64)
    if points.ndim < 2 or points.shape[0] == 0:
        raise ShapeError(f"x0 must hold B >= 1 starting points, shape (B, *S), not {points.shape}", field="x0")
    if not (np.isfinite(gtol) and gtol > 0) or not (isinstance(max_iterations, int) and max_iterations >= 0):
        raise InvalidArgumentError(
            f"gtol must be a positive number and max_iterations an integer >= 0, not {gtol!r} and {max_iterations!r}",
            field="gtol",
            reason="TOLERANCE_INVALID",
        )
    count = points.shape[0]
    source_ = model_source(source, model, model_version)
    model_input = ModelInput(source_.metadata(), wrt, inputs, precision, batch=count)
    if points[0].size != model_input.size:
        raise ShapeError(
            f"x0 has {points[0].size} values per problem; input {model_input.wrt!r} of model "
            f"{model_input.model_name!r} has shape {model_input.shape} ({model_input.size} values)",
            field="x0",
            metadata={"expected_size": model_input.size, "actual_size": points[0].size},
        )
    points = points.reshape(count, model_input.size)
    refuse_non_finite_input(points, "x0")
    lower, upper = _box(bounds, points.shape)
    weights = None if output_weights is None else np.asarray(output_weights, np.float64)
    evaluate = _BatchEvaluator(source_, model_input, weights)

    x = np.clip(points, lower, upper)
    everyone = np.arange(count)
    value, gradient, hessian = evaluate(x, everyone)
    shift = np.full(count, INITIAL_SHIFT)
    iterations = np.zeros(count, np.int64)
    converged = _projected_gradient_norm(x, gradient, lower, upper) <= gtol
    stalled = np.zeros(count, bool)
    for _ in range(max_iterations):
        active = np.flatnonzero(~converged & ~stalled)
        if active.size == 0:
            break
        step = _shifted_newton_steps(x[active], gradient[active], hessian[active], shift[active], lower[active], upper[active])
        trial = np.clip(x[active] + step, lower[active], upper[active])
        step = trial - x[active]
        predicted = -(
            np.einsum("bi,bi->b", gradient[active], step)
            + 0.5 * np.einsum("bi,bij,bj->b", step, hessian[active], step)
        )
        trial_value, trial_gradient, trial_hessian = evaluate(trial, active)
        actual = value[active] - trial_value
        ratio = np.where(predicted > 0, actual / np.where(predicted > 0, predicted, 1.0), -np.inf)
        # Near a minimum both decreases fall to f's rounding, where their ratio means
        # nothing: there a step that reduces the projected gradient is taken.
        noise = ROUNDING * (1.0 + np.abs(value[active]))
        within_rounding = (predicted <= noise) & (actual >= -noise)
        closer = _projected_gradient_norm(trial, trial_gradient, lower[active], upper[active]) < (
            _projected_gradient_norm(x[active], gradient[active], lower[active], upper[active])
        )
        accepted = (ratio >= ACCEPT_RATIO) | (within_rounding & closer)
        taken = active[accepted]
        x[taken], value[taken] = trial[accepted], trial_value[accepted]
        gradient[taken], hessian[taken] = trial_gradient[accepted], trial_hessian[accepted]
        shift[active] = np.where(
            ratio < SHRINK_RATIO,
            np.maximum(shift[active] * 4.0, INITIAL_SHIFT),
            np.where(ratio > GROW_RATIO, shift[active] * 0.25, shift[active]),
        )
        iterations[active] += 1
        converged[active] = _projected_gradient_norm(x[active], gradient[active], lower[active], upper[active]) <= gtol
        stalled[active] = ~converged[active] & (shift[active] > MAX_SHIFT)
    shape = (count, *model_input.shape)
    return BatchResult(
        x=x.reshape(shape),
        fun=value,
        gradient=gradient.reshape(shape),
        converged=converged,
        iterations=iterations,
        calls=source_.calls,
    )


class _BatchEvaluator:
    """Value (n,), gradient (n, D) and Hessian blocks (n, D, D) of problems ``problems`` at
    points (n, D), from one ``Evaluate``; non-finite results stop the run."""

    def __init__(self, source: ModelSource, model_input: ModelInput, weights: np.ndarray | None) -> None:
        self._source = source
        self._input = model_input
        self._weights = weights

    def __call__(self, points: np.ndarray, problems: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        weights = self._weights
        if weights is not None and weights.ndim == 2:
            weights = weights[problems]
        evaluation = self._source.evaluate(
            self._input.request(points, problems),
            output_weights=weights,
            wrt=self._input.wrt,
            precision=self._input.precision,
        )
        value, gradient, hessian = self._input.flat_evaluation(evaluation)
        for quantity, array in (("value", value), ("gradient", gradient), ("Hessian", hessian)):
            finite = np.isfinite(array.reshape(len(problems), -1)).all(axis=1)
            if not finite.all():
                first = int(np.flatnonzero(~finite)[0])
                refuse_non_finite_result(
                    self._source.name, {quantity: array[first]}, f"problem {int(problems[first])}'s point {points[first][:8]}"
                )
        return value, gradient, hessian


def _box(bounds: tuple[npt.ArrayLike, npt.ArrayLike] | None, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds broadcast to ``shape`` (B, D), float64."""
    if bounds is None:
        return np.full(shape, -np.inf), np.full(shape, np.inf)
    try:
        lower, upper = bounds
        lower = np.broadcast_to(np.asarray(lower, np.float64), shape).copy()
        upper = np.broadcast_to(np.asarray(upper, np.float64), shape).copy()
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(
            f"bounds must be (lb, ub), each a number, (D,) or (B, D) for x0 of {shape[0]} problems of "
            f"{shape[1]} values: {error}",
            field="bounds",
            reason="BOUNDS_INVALID",
        ) from error
    if np.any(np.isnan(lower) | np.isnan(upper)) or np.any(lower > upper):
        raise InvalidArgumentError(
            "every lower bound must be <= its upper bound and neither NaN", field="bounds", reason="BOUNDS_INVALID"
        )
    return lower, upper


def _projected_gradient_norm(x: np.ndarray, gradient: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """max_i |x - clip(x - g, lb, ub)|_i per problem, (n,)."""
    return np.max(np.abs(x - np.clip(x - gradient, lower, upper)), axis=1)


def _shifted_newton_steps(
    x: np.ndarray, gradient: np.ndarray, hessian: np.ndarray, shift: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """Steps s (n, D) solving (H + mu I) s = -g in the free variables; the held ones step onto their bound.

    A variable is held when it lies within epsilon of a bound the gradient pushes
    it past, epsilon being the projected gradient's size (capped), as in Bertsekas's
    projected Newton method. mu is ``shift``, raised where needed so that H + mu I
    is positive definite on the free variables (:func:`positive_definite_shifts`).
    """
    epsilon = np.minimum(_projected_gradient_norm(x, gradient, lower, upper), ACTIVE_SET_WIDTH)[:, None]
    held = ((x <= lower + epsilon) & (gradient > 0)) | ((x >= upper - epsilon) & (gradient < 0))
    free = ~held
    identity = np.eye(x.shape[1])
    reduced = hessian
    if held.any():
        reduced = np.where(free[:, :, None] & free[:, None, :], hessian, 0.0) + identity * held[:, None, :]
    mu = positive_definite_shifts(reduced, shift)
    rhs = -np.where(free, gradient, 0.0)
    newton = np.linalg.solve(reduced + mu[:, None, None] * identity, rhs[:, :, None])[:, :, 0]
    onto_bound = np.where(gradient > 0, lower, upper) - x
    return np.where(held, onto_bound, newton)
