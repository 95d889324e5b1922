"""The computations of the curvature summaries, one per kind: a compiled part and an eager driver.

A dense-block kind ("diagonal/blocks", "trace/blocks", "eigen/exact") compiles
the per-example Hessian blocks of x (B, *S): (B, D, D), from a per-example
strategy. Every other kind compiles one product only: each example's block
times ``chunk`` vectors at once, V (chunk, B, D) -> (chunk, B, D), by one
reverse-over-reverse pass over the batch tiled ``chunk`` times; it never forms
a (B, D, D) block.

The drivers around these parts (:func:`from_blocks`, :func:`matrix_free`:
the estimators of :mod:`.estimators` and :mod:`.lanczos`) run eagerly, so
their loops are Python loops and each product is one call of the compiled
part. Hence ``probes``, ``k``, ``which``, ``iterations``, ``tol`` and the
seed are runtime values that compile nothing, and a call given up stops
before its next compiled call (:func:`hessd_server.engine.compiled.run`
checks :mod:`.cancellation` before each). :mod:`.compiled` traces, compiles
and caches the compiled parts like every other derivative function; their
key's only option is ``chunk``, for the matrix-free kinds.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import tensorflow as tf

from . import derivatives, estimators, lanczos
from .derivatives import Forward
from .estimators import BlockMatvec

Body = Callable[..., tf.Tensor]
"""(forward, x (B, *S), weights (B, K)[, vectors (chunk, B, D)]) -> blocks (B, D, D) or products (chunk, B, D)."""

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


def vectors_spec(
    options: tuple[tuple[str, Any], ...], batch: int, event_shape: tuple[int, ...], dtype: tf.DType
) -> tf.TensorSpec:
    """The extra argument of a matrix-free kind's function: vectors (chunk, batch, D)."""
    return tf.TensorSpec([dict(options)["chunk"], batch, math.prod(event_shape)], dtype)


def body(kind: str, strategy: str | None) -> Body:
    """The compiled part of ``kind``: the blocks, by ``strategy`` ("pfor" or
    "tiled"), for a dense-block kind; the chunk of products for the others."""
    if kind in BLOCK_KINDS:
        per_example = (
            derivatives.per_example_hessian_pfor if strategy == "pfor" else derivatives.per_example_hessian_tiled
        )

        def blocks(forward: Forward, x: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
            dim = math.prod(x.shape[1:])
            return tf.reshape(per_example(forward, x, weights)[2], [x.shape[0], dim, dim])

        return blocks
    return products


def products(forward: Forward, x: tf.Tensor, weights: tf.Tensor, vectors: tf.Tensor) -> tf.Tensor:
    """V (n, B, D) -> (n, B, D), row [i, b] = H_b V[i, b]."""
    copies = vectors.shape[0]
    batch, *event = x.shape
    tiled_x = x if copies == 1 else tf.tile(x, [copies] + [1] * len(event))
    tiled_weights = weights if copies == 1 else tf.tile(weights, [copies, 1])
    tangent = tf.reshape(vectors, [copies * batch, *event])
    product = derivatives.hessian_vector_product(forward, tiled_x, tiled_weights, tangent)
    return tf.reshape(product, [copies, batch, math.prod(event)])


def from_blocks(
    kind: str, blocks: tf.Tensor, event_shape: tuple[int, ...], options: dict[str, Any]
) -> tuple[tf.Tensor, ...]:
    """A dense-block kind's result from the blocks (B, D, D); ``options`` has k and which for "eigen/exact"."""
    batch = blocks.shape[0]
    if kind == "diagonal/blocks":
        diagonal = tf.reshape(tf.linalg.diag_part(blocks), [batch, *event_shape])
        return diagonal, tf.zeros_like(diagonal)
    if kind == "trace/blocks":
        trace = tf.linalg.trace(blocks)
        return trace, tf.zeros_like(trace)
    values, vectors = tf.linalg.eigh(blocks)
    real = tf.ones_like(values, dtype=tf.bool)
    values, vectors = lanczos.select(values, vectors, real, options["k"], options["which"])
    vectors = lanczos.canonical_sign(tf.linalg.matrix_transpose(vectors))
    residuals = tf.norm(tf.einsum("bij,bkj->bki", blocks, vectors) - values[..., None] * vectors, axis=-1)
    return values, _shaped_vectors(vectors, event_shape), residuals


def matrix_free(
    kind: str,
    matvec: BlockMatvec,
    event_shape: tuple[int, ...],
    shape: tuple[int, int],
    dtype: tf.DType,
    options: dict[str, Any],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, ...]:
    """A matrix-free kind's result from ``matvec``, which takes exactly ``options["chunk"]`` vectors.

    Args:
        shape: (B, D), the padded batch and the size of one example.
        options: chunk, and the kind's probes, k, which, iterations and tol.
        seed: the stateless seed (2,) int64.
    """
    chunk = options["chunk"]
    if kind in ("diagonal/units", "trace/units"):
        diagonal = estimators.exact_diagonal(matvec, shape=shape, chunk=chunk, dtype=dtype)
        if kind == "trace/units":
            trace = tf.reduce_sum(diagonal, axis=1)
            return trace, tf.zeros_like(trace)
        diagonal = tf.reshape(diagonal, [shape[0], *event_shape])
        return diagonal, tf.zeros_like(diagonal)
    if kind == "eigen/lanczos":
        return _lanczos_eigen(matvec, event_shape, shape, dtype, options, seed)
    if kind == "spectrum":
        return _spectrum(matvec, shape, dtype, options, seed)
    estimate = {
        "diagonal/hutchinson": estimators.hutchinson_diagonal,
        "trace/hutchinson": estimators.hutchinson_trace,
        "trace/hutch++": estimators.hutch_plus_plus_trace,
    }[kind]
    value, stderr = estimate(matvec, shape=shape, probes=options["probes"], chunk=chunk, seed=seed, dtype=dtype)
    if kind == "diagonal/hutchinson":
        return tf.reshape(value, [shape[0], *event_shape]), tf.reshape(stderr, [shape[0], *event_shape])
    return value, stderr


def _lanczos_eigen(
    matvec: BlockMatvec,
    event_shape: tuple[int, ...],
    shape: tuple[int, int],
    dtype: tf.DType,
    options: dict[str, Any],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, ...]:
    """Lanczos on all examples at once; ``matvec`` takes one vector per example."""
    k, which = options["k"], options["which"]
    start = estimators.gaussian(estimators.fold_seed(seed, 0), list(shape), dtype)
    run = lanczos.lanczos(
        lambda q: matvec(q[None])[0],
        start,
        options["iterations"],
        seed=estimators.fold_seed(seed, 1),
        stop=lanczos.converged(k, which, options["tol"]),
    )
    values, vectors, _ = lanczos.ritz_pairs(run, k, which)
    vectors = lanczos.canonical_sign(vectors)
    products = estimators.apply_in_chunks(matvec, tf.transpose(vectors, [1, 0, 2]), options["chunk"])
    residuals = tf.norm(tf.transpose(products, [1, 0, 2]) - values[..., None] * vectors, axis=-1)
    return values, _shaped_vectors(vectors, event_shape), residuals


def _spectrum(
    matvec: BlockMatvec, shape: tuple[int, int], dtype: tf.DType, options: dict[str, Any], seed: tf.Tensor
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


def _shaped_vectors(vectors: tf.Tensor, event_shape: tuple[int, ...]) -> tf.Tensor:
    """(B, k, D) -> (B, k, *S)."""
    return tf.reshape(vectors, [vectors.shape[0], vectors.shape[1], *event_shape])
