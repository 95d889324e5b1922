"""The shifts that make minimize_batch's Newton systems positive definite, against
eigenvalues computed by LAPACK as the independent reference."""

from __future__ import annotations

import numpy as np
import pytest

from hessd.optimize._shifts import GROWTH, positive_definite_shifts

PROBLEMS, SIZE = 64, 12


def _mixed_matrices(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric matrices (PROBLEMS, SIZE, SIZE), some positive definite and some not, and
    first shifts (PROBLEMS,), some enough and some not."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((PROBLEMS, SIZE, SIZE))
    centre = rng.uniform(-4.0, 8.0, (PROBLEMS, 1, 1))
    return 0.5 * (noise + noise.transpose(0, 2, 1)) + centre * np.eye(SIZE), rng.uniform(1e-4, 1.0, PROBLEMS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shift_that_is_enough_is_kept_and_one_that_is_not_is_raised_past_the_need(seed: int) -> None:
    matrices, shift = _mixed_matrices(seed)
    smallest = np.linalg.eigvalsh(matrices)[:, 0]
    enough = smallest + shift > 0
    assert enough.any() and not enough.all()
    mu = positive_definite_shifts(matrices, shift)
    np.testing.assert_array_equal(mu[enough], shift[enough])
    assert np.all(smallest + mu > 0)
    needed = np.maximum(shift, -smallest)
    assert np.all(mu[~enough] <= GROWTH * needed[~enough] * (1.0 + 1e-12))


@pytest.mark.parametrize("seed", [0, 1])
def test_each_matrix_s_shift_is_what_it_gets_alone(seed: int) -> None:
    matrices, shift = _mixed_matrices(seed)
    together = positive_definite_shifts(matrices, shift)
    alone = [positive_definite_shifts(matrix[None], first[None])[0] for matrix, first in zip(matrices, shift)]
    np.testing.assert_array_equal(together, alone)


def test_a_negative_definite_matrix_is_shifted_just_past_its_diagonal_in_one_round() -> None:
    matrices = np.stack([-2.0 * np.eye(3), np.diag([-5.0, 1.0, 1.0])])
    mu = positive_definite_shifts(matrices, np.array([1e-3, 1e-3]))
    assert 2.0 < mu[0] < 2.0 + 1e-8
    assert 5.0 < mu[1] < 5.0 + 1e-8


def test_the_given_shifts_are_not_changed() -> None:
    matrices, shift = _mixed_matrices(3)
    before = shift.copy()
    positive_definite_shifts(matrices, shift)
    np.testing.assert_array_equal(shift, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_matrix_that_is_not_finite_is_refused(bad: float) -> None:
    matrices = np.stack([np.eye(3), -np.eye(3)])
    matrices[1, 0, 2] = matrices[1, 2, 0] = bad
    with pytest.raises(ValueError, match="finite"):
        positive_definite_shifts(matrices, np.array([1e-3, 1e-3]))
