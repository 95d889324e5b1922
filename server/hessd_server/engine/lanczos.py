"""Lanczos with full reorthogonalisation for many symmetric operators at once, in TensorFlow.

N independent runs advance together in one ``tf.while_loop``: run n uses the
operator H_n, given as ``matvec``: Q (N, D) -> (N, D) with row n = H_n Q[n].
Every new Lanczos vector is orthogonalised twice against all the previous
ones (classical Gram-Schmidt, "twice is enough"), so the Ritz values carry
no spurious copies. A run that finds an invariant subspace (beta ~ 0) goes
on from a fresh random vector orthogonal to its basis, with a zero coupling,
so its tridiagonal matrix stays a valid projection of H_n.

From the tridiagonal matrices come Ritz pairs (eigenpairs, :func:`ritz_pairs`)
and Gauss quadrature nodes and weights (spectral densities, :func:`quadrature`).
Everything here is traced into a graph: :func:`steps_until` runs a block of
steps as one ``tf.while_loop`` whose trip count is a runtime tensor, so one
compiled function (:mod:`.curvature_bodies`) serves every number of steps.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf

from .estimators import fold_seed, gaussian

Matvec = Callable[[tf.Tensor], tf.Tensor]
"""Q (N, D) -> (N, D), row n = H_n Q[n]."""

StopRule = Callable[["LanczosRun"], tf.Tensor]
"""A run so far -> a scalar bool tensor: stop now."""

_BREAKDOWN = 100.0
"""A new vector whose norm after orthogonalisation is below this many machine
epsilons times ‖H q‖ ends the current Krylov space."""

_MIN_NORM = 1e-30


class LanczosRun(NamedTuple):
    """The state of N Lanczos runs.

    Attributes:
        alpha: diagonal of each tridiagonal matrix T_n, (N, m); entries past ``steps`` are 0.
        beta: beta[:, j] couples vectors j and j + 1, (N, m); 0 after a restart.
        basis: the Lanczos vectors, (m, N, D); rows past ``steps`` are 0.
        steps: how many vectors were built, a scalar int32.
    """

    alpha: tf.Tensor
    beta: tf.Tensor
    basis: tf.Tensor
    steps: tf.Tensor


def _orthogonalised(vectors: tf.Tensor, basis: tf.Tensor) -> tf.Tensor:
    """``vectors`` (N, D) minus their projection on ``basis`` (m, N, D), done twice."""
    for _ in range(2):
        vectors -= tf.einsum("mn,mnd->nd", tf.einsum("mnd,nd->mn", basis, vectors), basis)
    return vectors


def normalised(vectors: tf.Tensor) -> tf.Tensor:
    """``vectors`` (..., D) scaled to unit length (zero vectors stay near zero)."""
    norms = tf.norm(vectors, axis=-1, keepdims=True)
    return vectors / tf.maximum(norms, tf.cast(_MIN_NORM, vectors.dtype))


def advance(
    j: tf.Tensor, q: tf.Tensor, product: tf.Tensor, run: LanczosRun, seed: tf.Tensor
) -> tuple[tf.Tensor, LanczosRun]:
    """Step ``j`` of the runs from vector q (N, D) and its ``product`` H q:
    the next vector, and the runs with q in their basis and T's new entries."""
    dtype = q.dtype
    threshold = tf.cast(_BREAKDOWN * np.finfo(dtype.as_numpy_dtype).eps, dtype)
    basis = tf.tensor_scatter_nd_update(run.basis, [[j]], q[None])
    alpha = tf.reduce_sum(q * product, axis=-1)
    residual = _orthogonalised(product, basis)
    beta = tf.norm(residual, axis=-1)
    broke = beta <= threshold * tf.norm(product, axis=-1)

    def restarted() -> tf.Tensor:
        fresh = _orthogonalised(gaussian(fold_seed(seed, j), tf.shape(q), dtype), basis)
        return tf.where(broke[:, None], normalised(fresh), normalised(residual))

    following = tf.cond(tf.reduce_any(broke), restarted, lambda: normalised(residual))
    column = tf.one_hot(j, tf.shape(run.alpha)[1], dtype=dtype)[None]
    return following, LanczosRun(
        alpha=run.alpha + alpha[:, None] * column,
        beta=run.beta + tf.where(broke, tf.zeros_like(beta), beta)[:, None] * column,
        basis=basis,
        steps=j + 1,
    )


def steps_until(
    matvec: Matvec,
    q: tf.Tensor,
    run: LanczosRun,
    end: tf.Tensor,
    *,
    seed: tf.Tensor,
    stop: StopRule,
) -> tuple[tf.Tensor, LanczosRun, tf.Tensor]:
    """Steps ``run.steps`` to ``end`` of the runs, from the next vector q (N, D), inside a graph.

    A ``tf.while_loop`` with a runtime trip count: it stops after step
    ``end - 1`` or as soon as ``stop`` holds after a step. ``seed`` (2,)
    draws the restart vectors. Returns the next vector, the runs, and
    whether ``stop`` held (scalar bool).
    """

    def more(q: tf.Tensor, run: LanczosRun, stopped: tf.Tensor) -> tf.Tensor:
        return tf.logical_and(run.steps < end, tf.logical_not(stopped))

    def step(q: tf.Tensor, run: LanczosRun, stopped: tf.Tensor) -> tuple[tf.Tensor, LanczosRun, tf.Tensor]:
        q, run = advance(run.steps, q, matvec(q), run, seed)
        return q, run, stop(run)

    return tf.while_loop(more, step, (q, run, tf.constant(False)))


def _tridiagonal(run: LanczosRun) -> tuple[tf.Tensor, tf.Tensor]:
    """T_n padded to (m, m) and a (N, m) mask of its real rows.

    Rows past ``steps`` hold a sentinel on the diagonal, above every real
    eigenvalue (Gershgorin), so ``eigh`` lists the real eigenvalues first.
    """
    index = tf.range(tf.shape(run.alpha)[1])
    real = index < run.steps
    coupled = index < run.steps - 1
    bound = tf.reduce_max(tf.abs(run.alpha), axis=1) + 2 * tf.reduce_max(tf.abs(run.beta), axis=1)
    diagonal = tf.where(real[None], run.alpha, (2 * bound + 1)[:, None])
    couplings = tf.where(coupled[None], run.beta, tf.zeros_like(run.beta))
    off_diagonal = tf.linalg.diag(couplings[:, :-1], k=1)
    matrix = tf.linalg.diag(diagonal) + off_diagonal + tf.linalg.matrix_transpose(off_diagonal)
    return matrix, tf.broadcast_to(real[None], tf.shape(run.alpha))


WHICH_ORDER = ("largest", "smallest", "largest_magnitude")
"""The values of ``which``, in the order a runtime index into them counts."""


def select(
    values: tf.Tensor, vectors: tf.Tensor, real: tf.Tensor, k: int | tf.Tensor, which: str | tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The k wanted eigenpairs of ascending ``values`` (N, m) and ``vectors`` (N, m, m) (columns).

    Only entries where ``real`` (N, m) is true are eligible. Returns values
    (N, k), sorted as ``which`` asks (descending, ascending, by descending
    |λ|), and their vectors (N, m, k). ``which`` is a name of
    :data:`WHICH_ORDER` or a scalar int32 tensor indexing it.
    """
    if isinstance(which, str):
        which = tf.constant(WHICH_ORDER.index(which))
    keys = tf.gather(tf.stack([values, -values, tf.abs(values)]), which)
    keys = tf.where(real, keys, tf.fill(tf.shape(keys), tf.constant(-np.inf, values.dtype)))
    order = tf.math.top_k(keys, k=k).indices
    return tf.gather(values, order, batch_dims=1), tf.gather(vectors, order, axis=2, batch_dims=1)


def _ritz_coordinates(run: LanczosRun, k: int | tf.Tensor, which: str | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Ritz values (N, k), their eigenvectors of T (N, m, k), and the residual
    estimates |beta_last · y_last| (N, k) that Lanczos gives for free."""
    matrix, real = _tridiagonal(run)
    values, vectors = tf.linalg.eigh(matrix)
    values, coordinates = select(values, vectors, real, k, which)
    last = run.steps - 1
    estimates = tf.abs(run.beta[:, last][:, None] * coordinates[:, last, :])
    return values, coordinates, estimates


def ritz_pairs(run: LanczosRun, k: int | tf.Tensor, which: str | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The k wanted Ritz pairs of each run.

    Returns Ritz values (N, k), Ritz vectors (N, k, D) of unit length, and
    the residual estimates (N, k).
    """
    values, coordinates, estimates = _ritz_coordinates(run, k, which)
    ritz_vectors = tf.einsum("nmk,mnd->nkd", coordinates, run.basis)
    return values, normalised(ritz_vectors), estimates


def converged(run: LanczosRun, k: tf.Tensor, which: str | tf.Tensor, tol: tf.Tensor) -> tf.Tensor:
    """Whether every run's k wanted Ritz pairs have estimated residual <=
    tol·|λ| (or below roundoff of the largest |λ|); k is a scalar int32, at
    most the runs' capacity m; false while steps < k."""
    values, _, estimates = _ritz_coordinates(run, k, which)
    dtype = values.dtype
    scale = tf.reduce_max(tf.abs(run.alpha), axis=1, keepdims=True) + tf.reduce_max(run.beta, axis=1, keepdims=True)
    floor = tf.cast(_BREAKDOWN * np.finfo(dtype.as_numpy_dtype).eps, dtype) * scale
    enough = tf.logical_or(estimates <= tol * tf.abs(values), estimates <= floor)
    return tf.logical_and(run.steps >= k, tf.reduce_all(enough))


def quadrature(run: LanczosRun) -> tuple[tf.Tensor, tf.Tensor]:
    """Gauss quadrature of each run's start vector: nodes (eigenvalues of T) and
    weights (squared first components of its eigenvectors), both (N, m), weights summing to 1."""
    matrix, _ = _tridiagonal(run)
    nodes, vectors = tf.linalg.eigh(matrix)
    return nodes, tf.square(vectors[:, 0, :])


def canonical_sign(vectors: tf.Tensor) -> tf.Tensor:
    """``vectors`` (..., D) flipped so that each one's largest-magnitude entry is positive."""
    largest = tf.gather(vectors, tf.argmax(tf.abs(vectors), axis=-1), axis=-1, batch_dims=vectors.shape.rank - 1)
    return vectors * tf.where(largest < 0, -tf.ones_like(largest), tf.ones_like(largest))[..., None]
