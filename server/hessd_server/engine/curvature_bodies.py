"""The computations of the curvature summaries, one per kind: a compiled part and an eager driver.

A dense-block kind ("diagonal/blocks", "trace/blocks", "eigen/exact")
compiles the per-example Hessian blocks of x (B, *S): (B, D, D), from a
per-example strategy. Every other kind compiles one *step* of its estimator
on Hessian-vector products, each example's block times many vectors at once
by one reverse-over-reverse pass over the batch tiled ``chunk`` times
(:func:`products`), never a (B, D, D) block:

* "diagonal/units", "trace/units": a chunk of products, V (chunk, B, D) -> (chunk, B, D);
* "diagonal/hutchinson", "trace/hutchinson": a chunk's probes, products and moments, one XLA call;
* "trace/hutch++", "eigen/lanczos", "spectrum": a block of chunks of Hutch++'s
  schedule or of Lanczos steps (reorthogonalisation, the stop test and the
  Ritz pairs included) as one ``tf.while_loop`` with a runtime trip count,
  in a graph function whose products are an XLA function, since the sketch
  and bases have runtime sizes.

Option values (``probes``, ``k``, ``which``, ``iterations``, ``tol``, the
seed) and the estimators' state are runtime tensor arguments, so they compile
nothing; the key's only option is ``chunk``, a power of two for the probe
kinds. Each compiled call takes at most :data:`MAX_CHUNK` products per
example, and the drivers (:func:`from_blocks`, :func:`matrix_free`) loop over
calls in Python, so a call given up stops before its next compiled call
(:func:`hessd_server.engine.compiled.run` checks :mod:`.cancellation`); a
typical request is one or a few compiled calls.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import tensorflow as tf

from . import derivatives, estimators, lanczos
from .derivatives import Forward
from .estimators import BlockMatvec

MAX_CHUNK = 1024
"""The most Hessian-vector products per example that one compiled call takes:
a call given up stops within one such chunk."""

Body = Callable[..., Any]
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

HUTCHINSON_KINDS = ("diagonal/hutchinson", "trace/hutchinson")
"""Kinds whose compiled function is one whole chunk of Hutchinson's estimator, :func:`hutchinson_step`."""


def extra_specs(
    kind: str, options: tuple[tuple[str, Any], ...], batch: int, event_shape: tuple[int, ...], dtype: tf.DType
) -> list[tf.TensorSpec]:
    """The arguments of a matrix-free kind's function after (x, fixed, weights):
    vectors (chunk, batch, D); for "eigen/lanczos" the state of :func:`lanczos_block`."""
    dim = math.prod(event_shape)
    if kind == "eigen/lanczos":
        count = tf.TensorSpec([], tf.int32)
        return [
            tf.TensorSpec([batch, dim], dtype),  # q
            tf.TensorSpec([batch, None], dtype),  # alpha
            tf.TensorSpec([batch, None], dtype),  # beta
            tf.TensorSpec([None, batch, dim], dtype),  # basis
            count,  # steps
            count,  # end
            count,  # k
            count,  # which
            tf.TensorSpec([], dtype),  # tol
            tf.TensorSpec([2], tf.int64),  # seed
            count,  # residuals_start
            count,  # residuals_end
        ]
    if kind == "spectrum":
        return [
            tf.TensorSpec([None, dim], dtype),  # q
            tf.TensorSpec([None, None], dtype),  # alpha
            tf.TensorSpec([None, None], dtype),  # beta
            tf.TensorSpec([None, None, dim], dtype),  # basis
            tf.TensorSpec([], tf.int32),  # steps
            tf.TensorSpec([], tf.int32),  # end
            tf.TensorSpec([2], tf.int64),  # seed
        ]
    if kind == "trace/hutch++":
        count = tf.TensorSpec([], tf.int32)
        return [
            tf.TensorSpec([2], tf.int64),  # seed
            count,  # probes
            count,  # start
            count,  # end
            tf.TensorSpec([None, batch, dim], dtype),  # sketch
            tf.TensorSpec([batch], dtype),  # low_rank
            tf.TensorSpec([], dtype),  # count
            tf.TensorSpec([batch], dtype),  # mean
            tf.TensorSpec([batch], dtype),  # m2
        ]
    if kind in HUTCHINSON_KINDS:
        value_shape = [batch] if kind == "trace/hutchinson" else [batch, dim]
        return [
            tf.TensorSpec([2], tf.int64),  # seed
            tf.TensorSpec([], tf.int32),  # step
            tf.TensorSpec([], tf.int32),  # probes
            tf.TensorSpec([], dtype),  # count
            tf.TensorSpec(value_shape, dtype),  # mean
            tf.TensorSpec(value_shape, dtype),  # m2
        ]
    return [tf.TensorSpec([dict(options)["chunk"], batch, dim], dtype)]


def runs_in_xla(kind: str) -> bool:
    """Whether ``kind``'s whole function can be one XLA computation: not for
    "eigen/lanczos", "spectrum" and "trace/hutch++", whose bases and sketch
    grow with runtime options; their products are an XLA function inside a graph
    function instead."""
    return kind not in ("eigen/lanczos", "trace/hutch++", "spectrum")


def body(kind: str, strategy: str | None, jit: bool, options: tuple[tuple[str, Any], ...]) -> Body:
    """The compiled part of ``kind``: the blocks, by ``strategy`` ("pfor" or
    "tiled"), for a dense-block kind; a block of Lanczos steps for
    "eigen/lanczos" (its products compiled by XLA when ``jit``); the chunk of
    products for the others."""
    if kind in BLOCK_KINDS:
        per_example = (
            derivatives.per_example_hessian_pfor if strategy == "pfor" else derivatives.per_example_hessian_tiled
        )

        def blocks(forward: Forward, x: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
            dim = math.prod(x.shape[1:])
            return tf.reshape(per_example(forward, x, weights)[2], [x.shape[0], dim, dim])

        return blocks
    if kind == "eigen/lanczos":
        return lambda forward, x, weights, *state: lanczos_block(forward, x, weights, *state, jit=jit)
    if kind == "spectrum":
        return lambda forward, x, weights, *state: spectrum_block(
            forward, x, weights, *state, chunk=dict(options)["chunk"], jit=jit
        )
    if kind == "trace/hutch++":
        return lambda forward, x, weights, *state: hutch_plus_plus_block(
            forward, x, weights, *state, chunk=dict(options)["chunk"], jit=jit
        )
    if kind in HUTCHINSON_KINDS:
        return lambda forward, x, weights, *state: hutchinson_step(
            forward, x, weights, *state, kind=kind, chunk=dict(options)["chunk"]
        )
    return products


def spectrum_block(
    forward: Forward,
    x: tf.Tensor,
    weights: tf.Tensor,
    q: tf.Tensor,
    alpha: tf.Tensor,
    beta: tf.Tensor,
    basis: tf.Tensor,
    steps: tf.Tensor,
    end: tf.Tensor,
    seed: tf.Tensor,
    *,
    chunk: int,
    jit: bool,
) -> tuple[tf.Tensor, ...]:
    """Lanczos steps ``steps`` to ``end`` of N = g · B runs, g probes per example
    (run p · B + b is probe p of example b), each step's g products per
    example taken ``chunk`` at a time by XLA when ``jit``.

    Returns q (N, D), alpha (N, m), beta (N, m), basis (m, N, D) and steps. A
    call takes (end - steps) · ⌈g / chunk⌉ · chunk products per example.
    """
    product = tf.function(lambda v: products(forward, x, weights, v), jit_compile=jit, autograph=False)
    batch, dim = x.shape[0], math.prod(x.shape[1:])

    def matvec(vectors: tf.Tensor) -> tf.Tensor:
        group = tf.shape(vectors)[0] // batch
        calls = (group + chunk - 1) // chunk
        padded = tf.pad(tf.reshape(vectors, [group, batch, dim]), [[0, calls * chunk - group], [0, 0], [0, 0]])
        blocks = tf.reshape(padded, [calls, chunk, batch, dim])
        result = tf.map_fn(product, blocks)
        return tf.reshape(tf.reshape(result, [calls * chunk, batch, dim])[:group], [group * batch, dim])

    run = lanczos.LanczosRun(alpha, beta, basis, steps)
    q, run, _ = lanczos.steps_until(matvec, q, run, end, seed=seed, stop=lambda run: tf.constant(False))
    return q, run.alpha, run.beta, run.basis, run.steps


def hutch_plus_plus_block(
    forward: Forward,
    x: tf.Tensor,
    weights: tf.Tensor,
    seed: tf.Tensor,
    probes: tf.Tensor,
    start: tf.Tensor,
    end: tf.Tensor,
    *state: tf.Tensor,
    chunk: int,
    jit: bool,
) -> tuple[tf.Tensor, ...]:
    """Chunks ``start`` to ``end`` of Hutch++'s schedule on ``state``
    (:class:`estimators.HutchPlusPlus`), each chunk's products by XLA when
    ``jit``; returns the new state. A call takes (end - start) · ``chunk``
    products per example."""
    product = tf.function(lambda v: products(forward, x, weights, v), jit_compile=jit, autograph=False)
    return tuple(
        estimators.hutch_plus_plus_chunks(
            product, estimators.HutchPlusPlus(*state), start, end, probes=probes, chunk=chunk, seed=seed
        )
    )


def hutchinson_step(
    forward: Forward,
    x: tf.Tensor,
    weights: tf.Tensor,
    seed: tf.Tensor,
    step: tf.Tensor,
    probes: tf.Tensor,
    count: tf.Tensor,
    mean: tf.Tensor,
    m2: tf.Tensor,
    *,
    kind: str,
    chunk: int,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Chunk ``step`` of Hutchinson's estimate: its ``chunk`` probes z
    (chunk, B, D) drawn (those past ``probes`` in all do not count), their
    products H z, and their samples (z ⊙ H z (B, D), or zᵀ H z (B,) for
    "trace/hutchinson") merged into the moments so far: count (scalar), mean
    and m2 (the samples' shape). Returns the new (count, mean, m2).
    """
    z, valid = estimators.probes_of_step(seed, step, chunk, probes, [x.shape[0], math.prod(x.shape[1:])], x.dtype)
    hz = products(forward, x, weights, z)
    samples = z * hz if kind == "diagonal/hutchinson" else tf.reduce_sum(z * hz, axis=-1)
    return tuple(estimators.merged(estimators.Moments(count, mean, m2), samples, valid))

def products(forward: Forward, x: tf.Tensor, weights: tf.Tensor, vectors: tf.Tensor) -> tf.Tensor:
    """V (n, B, D) -> (n, B, D), row [i, b] = H_b V[i, b]."""
    copies = vectors.shape[0]
    batch, *event = x.shape
    tiled_x = x if copies == 1 else tf.tile(x, [copies] + [1] * len(event))
    tiled_weights = weights if copies == 1 else tf.tile(weights, [copies, 1])
    tangent = tf.reshape(vectors, [copies * batch, *event])
    product = derivatives.hessian_vector_product(forward, tiled_x, tiled_weights, tangent)
    return tf.reshape(product, [copies, batch, math.prod(event)])


def lanczos_block(
    forward: Forward,
    x: tf.Tensor,
    weights: tf.Tensor,
    q: tf.Tensor,
    alpha: tf.Tensor,
    beta: tf.Tensor,
    basis: tf.Tensor,
    steps: tf.Tensor,
    end: tf.Tensor,
    k: tf.Tensor,
    which: tf.Tensor,
    tol: tf.Tensor,
    seed: tf.Tensor,
    residuals_start: tf.Tensor,
    residuals_end: tf.Tensor,
    *,
    jit: bool,
) -> tuple[tf.Tensor, ...]:
    """Lanczos steps ``steps`` to ``end`` (fewer once converged) on all examples, then their Ritz pairs.

    The runs are N = B, one per example, with capacity m = ``basis.shape[0]``;
    ``which`` indexes :data:`lanczos.WHICH_ORDER`. Once the runs are finished
    (converged, or m steps; a call asked for no steps, end <= steps, is for
    finished runs), the residuals ‖H v − λ v‖ of Ritz pairs
    ``residuals_start`` to ``residuals_end`` are computed too (zeros before).

    Returns q (B, D), alpha (B, m), beta (B, m), basis (m, B, D), steps, done
    (scalar bool: finished), Ritz values (B, k), Ritz vectors (B, k, D) and
    residuals (B, residuals_end - residuals_start). A call takes at most
    (end - steps) + (residuals_end - residuals_start) products per example.
    """
    product = tf.function(lambda v: products(forward, x, weights, v), jit_compile=jit, autograph=False)
    run = lanczos.LanczosRun(alpha, beta, basis, steps)
    q, run, converged = lanczos.steps_until(
        lambda vectors: product(vectors[None])[0],
        q,
        run,
        end,
        seed=seed,
        stop=lambda run: lanczos.converged(run, k, which, tol),
    )
    done = tf.logical_or(tf.logical_or(converged, run.steps >= tf.shape(basis)[0]), end <= steps)
    values, vectors, _ = lanczos.ritz_pairs(run, k, which)
    vectors = lanczos.canonical_sign(vectors)

    def residuals() -> tf.Tensor:
        wanted = tf.range(residuals_start, residuals_end)
        chosen = tf.gather(vectors, wanted, axis=1)
        hv = tf.map_fn(lambda v: product(v[None])[0], tf.transpose(chosen, [1, 0, 2]))
        return tf.norm(tf.transpose(hv, [1, 0, 2]) - tf.gather(values, wanted, axis=1)[..., None] * chosen, axis=-1)

    empty = tf.zeros([tf.shape(values)[0], residuals_end - residuals_start], values.dtype)
    return q, run.alpha, run.beta, run.basis, run.steps, done, values, vectors, tf.cond(done, residuals, lambda: empty)


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
    call: Callable[..., tuple[tf.Tensor, ...]],
    event_shape: tuple[int, ...],
    shape: tuple[int, int],
    dtype: tf.DType,
    options: dict[str, Any],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, ...]:
    """A matrix-free kind's result from ``call``, its compiled function on
    (x, fixed, weights) and the arguments after them (:func:`extra_specs`):
    for most kinds a chunk of exactly ``options["chunk"]`` vectors.

    Args:
        shape: (B, D), the padded batch and the size of one example.
        options: chunk, and the kind's probes, k, which, iterations and tol.
        seed: the stateless seed (2,) int64.
    """
    chunk = options["chunk"]
    if kind == "eigen/lanczos":
        return _lanczos_eigen(call, event_shape, shape, dtype, options, seed)

    def matvec(vectors: tf.Tensor) -> tf.Tensor:
        return call(vectors)[0]

    if kind in ("diagonal/units", "trace/units"):
        diagonal = estimators.exact_diagonal(matvec, shape=shape, chunk=chunk, dtype=dtype)
        if kind == "trace/units":
            trace = tf.reduce_sum(diagonal, axis=1)
            return trace, tf.zeros_like(trace)
        diagonal = tf.reshape(diagonal, [shape[0], *event_shape])
        return diagonal, tf.zeros_like(diagonal)
    if kind == "spectrum":
        return _spectrum(call, shape, dtype, options, seed)
    if kind in HUTCHINSON_KINDS:
        value, stderr = _hutchinson(call, kind, shape, dtype, options, seed)
    else:
        value, stderr = _hutch_plus_plus(call, shape, dtype, options, seed)
    if kind == "diagonal/hutchinson":
        return tf.reshape(value, [shape[0], *event_shape]), tf.reshape(stderr, [shape[0], *event_shape])
    return value, stderr


def _hutch_plus_plus(
    block: Callable[..., tuple[tf.Tensor, ...]],
    shape: tuple[int, int],
    dtype: tf.DType,
    options: dict[str, Any],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Hutch++'s estimate and standard error, :func:`hutch_plus_plus_block`
    (``block``, compiled) after block, each of at most :data:`MAX_CHUNK` products per example."""
    probes, chunk = options["probes"], options["chunk"]
    batch, dim = shape
    zero = tf.zeros([batch], dtype)
    state: tuple[tf.Tensor, ...] = (tf.zeros([probes // 3, batch, dim], dtype), zero, tf.zeros([], dtype), zero, zero)
    _, total = estimators.hutch_plus_plus_schedule(probes, chunk)
    per_call = max(1, MAX_CHUNK // chunk)
    for start in range(0, total, per_call):
        state = block(
            seed, tf.constant(probes, tf.int32), tf.constant(start, tf.int32),
            tf.constant(min(total, start + per_call), tf.int32), *state,
        )
    result = estimators.HutchPlusPlus(*state)
    moments = estimators.Moments(result.count, result.mean, result.m2)
    return result.low_rank + moments.mean, moments.standard_error()


def _hutchinson(
    step: Callable[..., tuple[tf.Tensor, ...]],
    kind: str,
    shape: tuple[int, int],
    dtype: tf.DType,
    options: dict[str, Any],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Hutchinson's mean and standard error, :func:`hutchinson_step` (``step``, compiled) chunk after chunk."""
    value_shape = [shape[0]] if kind == "trace/hutchinson" else list(shape)
    moments = (tf.zeros([], dtype), tf.zeros(value_shape, dtype), tf.zeros(value_shape, dtype))
    probes = tf.constant(options["probes"], tf.int32)
    for index in range(-(-options["probes"] // options["chunk"])):
        moments = step(seed, tf.constant(index, tf.int32), probes, *moments)
    result = estimators.Moments(*moments)
    return result.mean, result.standard_error()


def _lanczos_eigen(
    block: Callable[..., tuple[tf.Tensor, ...]],
    event_shape: tuple[int, ...],
    shape: tuple[int, int],
    dtype: tf.DType,
    options: dict[str, Any],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, ...]:
    """Lanczos on all examples at once, :func:`lanczos_block` after
    :func:`lanczos_block`, each taking at most :data:`MAX_CHUNK` products per
    example; ``block`` is the compiled function, called on the runs' state."""
    k, iterations = options["k"], options["iterations"]
    batch, dim = shape
    start = estimators.gaussian(estimators.fold_seed(seed, 0), list(shape), dtype)
    q = lanczos.normalised(start)
    state = (
        tf.zeros([batch, iterations], dtype),
        tf.zeros([batch, iterations], dtype),
        tf.zeros([iterations, batch, dim], dtype),
        0,
    )
    settings = (
        tf.constant(k, tf.int32),
        tf.constant(lanczos.WHICH_ORDER.index(options["which"]), tf.int32),
        tf.constant(options["tol"], dtype),
        estimators.fold_seed(seed, 1),
    )
    residuals: list[tf.Tensor] = []
    done = False
    while not done or sum(r.shape[1] for r in residuals) < k:
        steps = int(state[3])
        end = steps if done else min(iterations, steps + max(1, MAX_CHUNK // 2))
        first = sum(r.shape[1] for r in residuals) if done else 0
        last = min(k, first + max(1, MAX_CHUNK // 2))
        outputs = block(q, *state[:3], tf.constant(steps, tf.int32), tf.constant(end, tf.int32), *settings,
                        tf.constant(first, tf.int32), tf.constant(last, tf.int32))
        q, state = outputs[0], tuple(outputs[1:5])
        done, values, vectors = bool(outputs[5]), outputs[6], outputs[7]
        if done:
            residuals.append(outputs[8])
    return values, _shaped_vectors(vectors, event_shape), tf.concat(residuals, axis=1)


def _spectrum(
    block: Callable[..., tuple[tf.Tensor, ...]],
    shape: tuple[int, int],
    dtype: tf.DType,
    options: dict[str, Any],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Stochastic Lanczos quadrature: one Lanczos run per Rademacher probe and example.

    Probes go in groups of at most :data:`MAX_CHUNK`, each group's runs
    advanced by :func:`spectrum_block` (``block``, compiled) in calls of at
    most :data:`MAX_CHUNK` products per example.
    """
    probes, iterations, chunk = options["probes"], options["iterations"], options["chunk"]
    batch, dim = shape
    nodes, weights = [], []
    for group, first in enumerate(range(0, probes, MAX_CHUNK)):
        size = min(MAX_CHUNK, probes - first)
        runs = size * batch
        start = estimators.rademacher(estimators.fold_seed(seed, 2 * group), [runs, dim], dtype)
        q = lanczos.normalised(start)
        alpha, beta = tf.zeros([runs, iterations], dtype), tf.zeros([runs, iterations], dtype)
        basis = tf.zeros([iterations, runs, dim], dtype)
        steps = 0
        per_call = max(1, MAX_CHUNK // (-(-size // chunk) * chunk))
        while steps < iterations:
            end = min(iterations, steps + per_call)
            q, alpha, beta, basis, _ = block(
                q, alpha, beta, basis, tf.constant(steps, tf.int32), tf.constant(end, tf.int32),
                estimators.fold_seed(seed, 2 * group + 1),
            )
            steps = end
        group_nodes, group_weights = lanczos.quadrature(lanczos.LanczosRun(alpha, beta, basis, tf.constant(steps)))
        nodes.append(tf.reshape(group_nodes, [size, batch, iterations]))
        weights.append(tf.reshape(group_weights, [size, batch, iterations]))
    return (
        tf.transpose(tf.concat(nodes, 0), [1, 0, 2]),
        tf.transpose(tf.concat(weights, 0), [1, 0, 2]) / probes,
    )


def _shaped_vectors(vectors: tf.Tensor, event_shape: tuple[int, ...]) -> tf.Tensor:
    """(B, k, D) -> (B, k, *S)."""
    return tf.reshape(vectors, [vectors.shape[0], vectors.shape[1], *event_shape])
