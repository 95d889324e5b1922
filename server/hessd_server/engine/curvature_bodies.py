"""The traced computations of the curvature summaries, one per kind.

A body takes (forward, x (B, *S), weights (B, K), seed (2,)) and returns a
tuple of tensors, each with the batch first. Exact kinds on dense blocks
reduce the per-example Hessian (from a per-example strategy); every other
kind works from batched Hessian-vector products and never forms a (B, D, D)
block. :mod:`.compiled` traces, compiles and caches them like every other
derivative function; the key's ``options`` carry the shapes they need.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import tensorflow as tf

from . import derivatives, estimators, lanczos
from .derivatives import Forward
from .estimators import BlockMatvec

Body = Callable[[Forward, tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, ...]]

BLOCK_KINDS = ("diagonal/blocks", "trace/blocks", "eigen/exact")
"""Kinds computed from dense per-example blocks, which use a per-example strategy."""

MATRIX_FREE_KINDS = (
    "diagonal/units",
    "diagonal/hutchinson",
    "trace/units",
    "trace/hutchinson",
    "trace/hutch++",
    "eigen/lanczos",
    "spectrum",
)
"""Kinds computed from batched Hessian-vector products only."""

KINDS = BLOCK_KINDS + MATRIX_FREE_KINDS

SEED_SPEC = tf.TensorSpec([2], tf.int64)
"""The extra argument of every curvature function: a stateless seed."""


def block_matvec(forward: Forward, x: tf.Tensor, weights: tf.Tensor, *, jit: bool) -> BlockMatvec:
    """V (n, B, D) -> H_b V[i, b], by one reverse-over-reverse pass over the batch
    tiled n times, compiled by XLA when ``jit``."""
    batch, *event = x.shape
    dim = math.prod(event)

    def products(vectors: tf.Tensor, x: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        copies = vectors.shape[0]
        tiled_x = x if copies == 1 else tf.tile(x, [copies] + [1] * len(event))
        tiled_weights = weights if copies == 1 else tf.tile(weights, [copies, 1])
        tangent = tf.reshape(vectors, [copies * batch, *event])
        product = derivatives.hessian_vector_product(forward, tiled_x, tiled_weights, tangent)
        return tf.reshape(product, [copies, batch, dim])

    compiled = tf.function(products, jit_compile=jit, autograph=False)
    return lambda vectors: compiled(vectors, x, weights)


def body(kind: str, options: dict[str, Any], strategy: str | None, jit: bool) -> Body:
    """The computation of ``kind`` with its ``options`` (probes, chunk, k, which, iterations, tol).

    ``chunk`` is how many products per example one call of the compiled
    product takes; every call of one function uses the same, so it compiles once.

    The Hessian-vector products (or the dense blocks) run in functions
    compiled by XLA when ``jit``; the loops and small dense algebra around
    them (Lanczos's tridiagonal ``eigh``, Hutch++'s QR) run in graph mode,
    which compiles an order of magnitude faster than XLA does for them.
    """

    def traced(forward: Forward, x: tf.Tensor, weights: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, ...]:
        batch, *event = x.shape
        shape = (batch, math.prod(event))
        if kind in BLOCK_KINDS:
            per_example = (
                derivatives.per_example_hessian_pfor if strategy == "pfor" else derivatives.per_example_hessian_tiled
            )
            compiled = tf.function(
                lambda x, weights: per_example(forward, x, weights)[2], jit_compile=jit, autograph=False
            )
            blocks = tf.reshape(compiled(x, weights), [batch, shape[1], shape[1]])
            return _from_blocks(kind, blocks, x, options)
        matvec = block_matvec(forward, x, weights, jit=jit)
        return _matrix_free(kind, matvec, x, shape, options, seed)

    return traced


def _from_blocks(kind: str, blocks: tf.Tensor, x: tf.Tensor, options: dict[str, Any]) -> tuple[tf.Tensor, ...]:
    if kind == "diagonal/blocks":
        diagonal = tf.reshape(tf.linalg.diag_part(blocks), tf.shape(x))
        return diagonal, tf.zeros_like(diagonal)
    if kind == "trace/blocks":
        trace = tf.linalg.trace(blocks)
        return trace, tf.zeros_like(trace)
    values, vectors = tf.linalg.eigh(blocks)
    real = tf.ones_like(values, dtype=tf.bool)
    values, vectors = lanczos.select(values, vectors, real, options["k"], options["which"])
    vectors = lanczos.canonical_sign(tf.linalg.matrix_transpose(vectors))
    residuals = tf.norm(tf.einsum("bij,bkj->bki", blocks, vectors) - values[..., None] * vectors, axis=-1)
    return values, _shaped_vectors(vectors, x), residuals


def _matrix_free(
    kind: str, matvec: BlockMatvec, x: tf.Tensor, shape: tuple[int, int], options: dict[str, Any], seed: tf.Tensor
) -> tuple[tf.Tensor, ...]:
    dtype = x.dtype
    if kind in ("diagonal/units", "trace/units"):
        diagonal = estimators.exact_diagonal(matvec, shape=shape, chunk=options["chunk"], dtype=dtype)
        if kind == "trace/units":
            trace = tf.reduce_sum(diagonal, axis=1)
            return trace, tf.zeros_like(trace)
        return tf.reshape(diagonal, tf.shape(x)), tf.zeros_like(x)
    if kind == "eigen/lanczos":
        return _lanczos_eigen(matvec, x, shape, options, seed)
    if kind == "spectrum":
        return _spectrum(matvec, shape, options, seed, dtype)
    estimate = {
        "diagonal/hutchinson": estimators.hutchinson_diagonal,
        "trace/hutchinson": estimators.hutchinson_trace,
        "trace/hutch++": estimators.hutch_plus_plus_trace,
    }[kind]
    value, stderr = estimate(
        matvec, shape=shape, probes=options["probes"], chunk=options["chunk"], seed=seed, dtype=dtype
    )
    if kind == "diagonal/hutchinson":
        return tf.reshape(value, tf.shape(x)), tf.reshape(stderr, tf.shape(x))
    return value, stderr


def _lanczos_eigen(
    matvec: BlockMatvec, x: tf.Tensor, shape: tuple[int, int], options: dict[str, Any], seed: tf.Tensor
) -> tuple[tf.Tensor, ...]:
    k, which = options["k"], options["which"]
    start = estimators.gaussian(estimators.fold_seed(seed, 0), list(shape), x.dtype)
    run = lanczos.lanczos(
        lambda q: matvec(q[None])[0],
        start,
        options["iterations"],
        seed=estimators.fold_seed(seed, 1),
        stop=lanczos.converged(k, which, options["tol"]),
    )
    values, vectors, _ = lanczos.ritz_pairs(run, k, which)
    vectors = lanczos.canonical_sign(vectors)
    products = estimators.apply_in_chunks(matvec, tf.transpose(vectors, [1, 0, 2]), 1)
    residuals = tf.norm(tf.transpose(products, [1, 0, 2]) - values[..., None] * vectors, axis=-1)
    return values, _shaped_vectors(vectors, x), residuals


def _spectrum(
    matvec: BlockMatvec, shape: tuple[int, int], options: dict[str, Any], seed: tf.Tensor, dtype: tf.DType
) -> tuple[tf.Tensor, tf.Tensor]:
    """Stochastic Lanczos quadrature: one Lanczos run per Rademacher probe and example."""
    probes = options["probes"]
    batch, dim = shape
    start = estimators.rademacher(estimators.fold_seed(seed, 0), [probes * batch, dim], dtype)

    def runs_matvec(q: tf.Tensor) -> tf.Tensor:
        products = estimators.apply_in_chunks(matvec, tf.reshape(q, [probes, batch, dim]), options["chunk"])
        return tf.reshape(products, [probes * batch, dim])

    run = lanczos.lanczos(runs_matvec, start, options["iterations"], seed=estimators.fold_seed(seed, 1))
    nodes, weights = lanczos.quadrature(run)
    per_example = [probes, batch, options["iterations"]]
    return (
        tf.transpose(tf.reshape(nodes, per_example), [1, 0, 2]),
        tf.transpose(tf.reshape(weights, per_example), [1, 0, 2]) / probes,
    )


def _shaped_vectors(vectors: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """(B, k, D) -> (B, k, *S)."""
    return tf.reshape(vectors, [x.shape[0], vectors.shape[1], *x.shape[1:]])
