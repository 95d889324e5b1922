"""Curvature without the matrix: the diagonal, trace, top eigenpairs and
spectral density of each example's Hessian block with respect to its input.

These functions take the same model, ``x`` and common keywords
(``output_weights``, ``wrt``, ``precision``) as :func:`hessd_server.hessian`
and summarise the per-example blocks H_b = d2 f_b / dx_b dx_b, so the model's
examples must not influence each other (``BatchDependenceError`` otherwise).

``method="exact"`` reduces the dense blocks when they fit the model's
``EngineConfig.curvature_memory_bytes`` (diagonal and trace fall back to
products with unit vectors when they do not); matrix-free methods use batched
Hessian-vector products only: Hutchinson and Hutch++ with Rademacher probes
drawn independently per example, and Lanczos with full reorthogonalisation.
``method="auto"`` is exact when the blocks fit and matrix-free otherwise.
Each (model, method, bucket, chunk) compiles one function, the blocks or one
step of the estimator on Hessian-vector products with the options as runtime
tensors (:mod:`.curvature_bodies`), so option values compile nothing new; a
Python loop calls it, at most :data:`MAX_CHUNK` products per example per
call, so a cancelled call or a passed deadline stops it before its next call
(:mod:`.cancellation`). An integer ``seed`` makes a result reproducible
bit for bit, ``None`` draws fresh randomness.

Every request is held to a budget before anything is compiled: the option
limits of :mod:`hessd.curvature_options` (``MAX_PROBES``, ``MAX_ITERATIONS``,
``MAX_K``), k <= D, ``max_curvature_products`` for the Hessian-vector
products a matrix-free method takes over all examples (:func:`check_products`),
and ``curvature_memory_bytes`` for what an estimator keeps (Hutch++'s sketch,
Lanczos bases; :func:`check_memory`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from hessd import curvature_options as opts
from hessd.errors import BatchDependenceError, InvalidArgumentError
from hessd.results import Diagonal, Eigen, Spectrum, Trace

from . import compiled, curvature_bodies
from .execution import check_hessian_size, bucket_batch, function_key, prepare
from .model import Model
from .padding import pad_rows
from .api import ModelLike
from .model_loading import as_model
from .validation import PreparedInputs, Wrt, check_result_size
from .warmup import add_warmers

_ACTIVATION_FACTOR = 16
"""Memory of one Hessian-vector product, in multiples of its vector, assumed
when sizing how many products run at once."""

MAX_CHUNK = curvature_bodies.MAX_CHUNK
"""The most Hessian-vector products per example that one compiled call takes."""


def hessian_diagonal(
    model: ModelLike,
    x: Any,
    *,
    method: str = "auto",
    probes: int = opts.DEFAULT_PROBES,
    seed: int | None = None,
    output_weights: Any = None,
    wrt: Wrt = None,
    precision: str | None = None,
) -> Diagonal:
    """The diagonal of each example's Hessian block: ``Diagonal(diagonal, stderr)``, both (B, *S).

    Args:
        model, x, output_weights, wrt, precision: as for :func:`hessd_server.hessian`.
        method: "exact" (dense blocks, or ``D`` products with unit vectors when
            the blocks exceed the memory budget), "hutchinson" (mean of z ⊙ H z
            over Rademacher probes z), or "auto" (exact if the blocks fit, else
            Hutchinson).
        probes: Hessian-vector products per example for Hutchinson, at most
            ``MAX_PROBES``, and probes · B at most ``max_curvature_products``
            (as is D · B for ``D`` products with unit vectors).
        seed: an integer in [0, 2**64) for reproducible probes; ``None`` for fresh ones.

    ``stderr`` is zeros for exact results, and the sample standard deviation
    over probes divided by sqrt(probes) for Hutchinson.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model(hs.DEMO_MODEL_SOURCE)
    >>> d = hs.hessian_diagonal(m, np.ones((3, 10), np.float32))
    >>> d.diagonal.shape, bool(np.all(d.stderr == 0))
    ((3, 10), True)
    """
    method, probes, seed = opts.check_diagonal_options(method, probes, seed)
    m = as_model(model)
    inputs, weights = _prepared(m, x, output_weights, wrt, precision)
    check_result_size(m, 2 * inputs.batch * inputs.event_size, inputs.precision, "Hessian diagonal", _SMALLER_BATCH)
    if method == "auto":
        method = "exact" if _blocks_fit(m, inputs) else "hutchinson"
    if method == "hutchinson":
        _check_probe_products(m, inputs, probes)
        kind, options = "diagonal/hutchinson", {"probes": probes, "chunk": _probe_chunk(m, inputs, probes)}
    elif _blocks_fit(m, inputs):
        kind, options = "diagonal/blocks", {}
    else:
        _check_unit_products(m, inputs)
        kind, options = "diagonal/units", {"chunk": _chunk(m, inputs, inputs.event_size)}
    return Diagonal(*_run(m, kind, inputs, weights, options, seed))


def hessian_trace(
    model: ModelLike,
    x: Any,
    *,
    method: str = "auto",
    probes: int = opts.DEFAULT_PROBES,
    seed: int | None = None,
    output_weights: Any = None,
    wrt: Wrt = None,
    precision: str | None = None,
) -> Trace:
    """The trace of each example's Hessian block, the Laplacian Δf_b: ``Trace(trace, stderr)``, both (B,).

    Args:
        model, x, output_weights, wrt, precision: as for :func:`hessd_server.hessian`.
        method: "exact" (dense blocks, or ``D`` products with unit vectors when
            the blocks exceed the memory budget), "hutchinson" (mean of zᵀ H z),
            "hutch++" (a low-rank sketch taken exactly plus Hutchinson on the
            rest; ``probes`` >= 3, split in thirds), or "auto" (exact if the
            blocks fit, else Hutch++ if its sketch fits, else Hutchinson).
        probes: Hessian-vector products per example for Hutchinson and
            Hutch++, at most ``MAX_PROBES``, and probes · B at most
            ``max_curvature_products`` (as is D · B for ``D`` products with
            unit vectors); Hutch++ keeps 3 * (probes // 3) vectors (B, D),
            which must fit ``curvature_memory_bytes``.
        seed: an integer in [0, 2**64) for reproducible probes; ``None`` for fresh ones.

    ``stderr`` is zeros for exact results; for Hutchinson the sample standard
    deviation over probes divided by sqrt(probes); for Hutch++ the same over
    its Hutchinson third.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model(hs.DEMO_MODEL_SOURCE)
    >>> t = hs.hessian_trace(m, np.ones((3, 10), np.float32), method="hutchinson", probes=16, seed=0)
    >>> t.trace.shape, t.stderr.shape
    ((3,), (3,))
    """
    method, probes, seed = opts.check_trace_options(method, probes, seed)
    m = as_model(model)
    inputs, weights = _prepared(m, x, output_weights, wrt, precision)
    check_result_size(m, 2 * inputs.batch, inputs.precision, "Hessian trace", _SMALLER_BATCH)
    if method == "auto":
        method = "exact" if _blocks_fit(m, inputs) else "hutch++" if _sketch_fits(m, inputs, probes) else "hutchinson"
    if method in ("hutchinson", "hutch++"):
        _check_probe_products(m, inputs, probes)
    if method == "hutch++":
        check_memory(
            m,
            inputs,
            vectors=3 * (probes // 3),
            field="probes",
            value=probes,
            what="Hutch++ keeps a sketch of probes // 3 vectors, its products and their orthonormal range",
            advice="ask fewer probes, send a smaller batch, or use method='hutchinson' (its memory does not grow "
            "with probes)",
        )
    if method in ("hutchinson", "hutch++"):
        per_call = probes // 3 if method == "hutch++" else probes
        kind, options = f"trace/{method}", {"probes": probes, "chunk": _probe_chunk(m, inputs, per_call)}
    elif _blocks_fit(m, inputs):
        kind, options = "trace/blocks", {}
    else:
        _check_unit_products(m, inputs)
        kind, options = "trace/units", {"chunk": _chunk(m, inputs, inputs.event_size)}
    return Trace(*_run(m, kind, inputs, weights, options, seed))


def hessian_eigen(
    model: ModelLike,
    x: Any,
    *,
    k: int = 1,
    which: str = "largest",
    method: str = "auto",
    iterations: int | None = None,
    tol: float = opts.DEFAULT_TOL,
    seed: int | None = None,
    output_weights: Any = None,
    wrt: Wrt = None,
    precision: str | None = None,
) -> Eigen:
    """k eigenpairs of each example's Hessian block: ``Eigen(eigenvalues, eigenvectors, residuals)``.

    Shapes: eigenvalues (B, k), eigenvectors (B, k, *S) of unit length,
    residuals ‖H_b v − λ v‖ (B, k). Eigenvalues are sorted descending for
    ``which="largest"``, ascending for "smallest", by descending |λ| for
    "largest_magnitude"; each eigenvector's largest-magnitude entry is positive.

    Args:
        model, x, output_weights, wrt, precision: as for :func:`hessd_server.hessian`.
        k: how many eigenpairs, 1 <= k <= min(D, ``MAX_K``).
        which: "largest", "smallest" or "largest_magnitude".
        method: "exact" (``eigh`` of the dense blocks, which must fit
            ``max_result_bytes`` as a Hessian would), "lanczos" (matrix-free,
            all examples at once), or "auto" (exact if the blocks fit the
            memory budget, else Lanczos).
        iterations: Lanczos's Krylov dimension, in [k, ``MAX_ITERATIONS``],
            clipped to D; ``None`` means max(64, 4k), clipped to D. Lanczos
            takes (iterations + k) · B products, at most
            ``max_curvature_products``, and keeps iterations + k vectors
            (B, D), which must fit ``curvature_memory_bytes``.
        tol: Lanczos stops early once every wanted pair of every example has
            ‖Hv − λv‖ <= tol·|λ|. A run that does not converge still returns;
            its residuals tell.
        seed: an integer in [0, 2**64) for a reproducible start vector; ``None`` for a fresh one.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model(hs.DEMO_MODEL_SOURCE)
    >>> e = hs.hessian_eigen(m, np.ones((3, 10), np.float32), k=2, method="lanczos", seed=0)
    >>> e.eigenvalues.shape, e.eigenvectors.shape, e.residuals.shape
    ((3, 2), (3, 2, 10), (3, 2))
    """
    k, which, method, iterations, tol, seed = opts.check_eigen_options(k, which, method, iterations, tol, seed)
    m = as_model(model)
    inputs, weights = _prepared(m, x, output_weights, wrt, precision)
    dim = inputs.event_size
    if k > dim:
        raise InvalidArgumentError(
            f"k must be <= D = {dim}, the size of {inputs.wrt_text}; got {k}",
            field="k",
            reason="CURVATURE_OPTION_INVALID",
            metadata={"k": k, "dimension": dim},
        )
    advice = "ask fewer eigenpairs k, or send a smaller batch"
    check_result_size(m, inputs.batch * k * (dim + 2), inputs.precision, "eigenpairs", advice)
    if method == "auto":
        method = "exact" if _blocks_fit(m, inputs) else "lanczos"
    if method == "exact":
        check_hessian_size(m, inputs, False, "Hessian that method='exact' decomposes")
        kind, options = "eigen/exact", {"k": k, "which": which}
    else:
        krylov = opts.default_eigen_iterations(k, dim) if iterations is None else min(iterations, dim)
        check_products(
            m,
            inputs,
            per_example=krylov + k,
            field="iterations",
            asked=f"iterations={krylov:,} (clipped to D) and k={k:,} (one product per Lanczos step and per "
            "residual, for each example)",
            advice="ask fewer iterations or eigenpairs k, or send a smaller batch",
        )
        check_memory(
            m,
            inputs,
            vectors=krylov + k,
            field="iterations",
            value=krylov,
            what="Lanczos keeps a basis of `iterations` vectors (clipped to D) and k Ritz vectors",
            advice="ask fewer iterations or eigenpairs k, or send a smaller batch",
        )
        kind = "eigen/lanczos"
        options = {"k": k, "which": which, "iterations": krylov, "tol": tol, "chunk": 1}
    return Eigen(*_run(m, kind, inputs, weights, options, seed))


def hessian_spectrum(
    model: ModelLike,
    x: Any,
    *,
    probes: int = opts.DEFAULT_SPECTRUM_PROBES,
    iterations: int = opts.DEFAULT_SPECTRUM_ITERATIONS,
    seed: int | None = None,
    output_weights: Any = None,
    wrt: Wrt = None,
    precision: str | None = None,
) -> Spectrum:
    """The spectral density of each example's Hessian block by stochastic Lanczos quadrature.

    Returns ``Spectrum(nodes, weights)``, both (B, probes, iterations): one
    Lanczos run of ``iterations`` steps (clipped to D) per Rademacher probe
    and example gives Ritz values (nodes) and the squared first components of
    their eigenvectors over ``probes`` (weights, >= 0, summing to 1 per
    example). The density is sum weights · δ(λ − nodes); smooth it to draw it.
    ``probes`` is at most ``MAX_PROBES`` and ``iterations`` at most
    ``MAX_ITERATIONS``; the runs take probes · iterations · B products, at
    most ``max_curvature_products``, and keep probes · iterations vectors
    (B, D), which must fit ``curvature_memory_bytes``.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model(hs.DEMO_MODEL_SOURCE)
    >>> s = hs.hessian_spectrum(m, np.ones((2, 10), np.float32), probes=4, iterations=6, seed=0)
    >>> s.nodes.shape, np.allclose(s.weights.sum(axis=(1, 2)), 1)
    ((2, 4, 6), True)
    """
    probes, iterations, seed = opts.check_spectrum_options(probes, iterations, seed)
    m = as_model(model)
    inputs, weights = _prepared(m, x, output_weights, wrt, precision)
    krylov = min(iterations, inputs.event_size)
    check_result_size(
        m, 2 * inputs.batch * probes * krylov, inputs.precision, "spectrum",
        "ask fewer probes or iterations, or send a smaller batch",
    )
    check_products(
        m,
        inputs,
        per_example=probes * krylov,
        field="probes",
        asked=f"probes={probes:,} runs of iterations={krylov:,} Lanczos steps (clipped to D) for each example",
        advice="ask fewer probes or iterations, or send a smaller batch",
    )
    check_memory(
        m,
        inputs,
        vectors=probes * krylov,
        field="probes",
        value=probes,
        what="stochastic Lanczos quadrature keeps a basis of `iterations` vectors (clipped to D) for each of its "
        "`probes` runs",
        advice="ask fewer probes or iterations, or send a smaller batch",
    )
    options = {"probes": probes, "iterations": krylov, "chunk": _probe_chunk(m, inputs, probes)}
    return Spectrum(*_run(m, "spectrum", inputs, weights, options, seed))


def _prepared(
    m: Model, x: Any, output_weights: Any, wrt: Wrt, precision: str | None
) -> tuple[PreparedInputs, np.ndarray]:
    inputs, weights = prepare(m, x, output_weights, wrt, precision)
    if not m.batch_independent:
        raise BatchDependenceError(
            f"model {m.name!r} mixes examples within a batch (an example's outputs depend on other examples' "
            "inputs), so it has no per-example Hessian blocks to summarise; ask hessian(..., full=True) instead",
        )
    return inputs, weights


_SMALLER_BATCH = "send a smaller batch"


def _vector_bytes(m: Model, inputs: PreparedInputs) -> int:
    """Bytes of one vector per example of the padded batch, (B, D)."""
    return bucket_batch(m, inputs.batch) * inputs.event_size * np.dtype(inputs.precision).itemsize


def _block_bytes(m: Model, inputs: PreparedInputs) -> int:
    return _vector_bytes(m, inputs) * inputs.event_size


def _blocks_fit(m: Model, inputs: PreparedInputs) -> bool:
    """Whether the padded batch's dense blocks fit ``curvature_memory_bytes``."""
    return _block_bytes(m, inputs) <= m.config.curvature_memory_bytes


def _sketch_fits(m: Model, inputs: PreparedInputs, probes: int) -> bool:
    """Whether Hutch++'s sketch for ``probes`` fits ``curvature_memory_bytes``."""
    return 3 * (probes // 3) * _vector_bytes(m, inputs) <= m.config.curvature_memory_bytes


def check_memory(
    m: Model, inputs: PreparedInputs, *, vectors: int, field: str, value: int, what: str, advice: str
) -> None:
    """Refuse an estimator that would keep ``vectors`` vectors (B, D) over ``curvature_memory_bytes``.

    B is the padded batch; ``what`` says what the estimator keeps, ``advice``
    what to change, ``field`` and ``value`` the option that decides it.

    Raises:
        InvalidArgumentError: reason ``CURVATURE_OPTION_INVALID`` on ``field``,
            with metadata memory_bytes, curvature_memory_bytes and the option's value.
    """
    needed = vectors * _vector_bytes(m, inputs)
    limit = m.config.curvature_memory_bytes
    if needed <= limit:
        return
    batch = bucket_batch(m, inputs.batch)
    raise InvalidArgumentError(
        f"{field}={value:,} needs {needed:,} bytes at B={batch}, D={inputs.event_size} ({inputs.precision}), over "
        f"the model's curvature memory budget of {limit:,} bytes: {what}; {advice}",
        field=field,
        reason="CURVATURE_OPTION_INVALID",
        metadata={"value": value, "memory_bytes": needed, "curvature_memory_bytes": limit},
    )


def check_products(
    m: Model, inputs: PreparedInputs, *, per_example: int, field: str, asked: str, advice: str
) -> None:
    """Refuse a matrix-free estimate of ``per_example`` Hessian-vector products per
    example that takes more than ``max_curvature_products`` over the request's B examples.

    ``asked`` says which options ask for them, ``advice`` what to lower, ``field``
    names the option that decides it.

    Raises:
        InvalidArgumentError: reason ``CURVATURE_OPTION_INVALID`` on ``field``, with
            metadata products and max_curvature_products.
    """
    products = per_example * inputs.batch
    limit = m.config.max_curvature_products
    if products <= limit:
        return
    raise InvalidArgumentError(
        f"{asked}: {products:,} Hessian-vector products at B={inputs.batch}, over the limit of "
        f"{limit:,} per curvature request (max_curvature_products); {advice}",
        field=field,
        reason="CURVATURE_OPTION_INVALID",
        metadata={"products": products, "max_curvature_products": limit},
    )


def _check_probe_products(m: Model, inputs: PreparedInputs, probes: int) -> None:
    """:func:`check_products` of Hutchinson or Hutch++ with ``probes`` products per example."""
    check_products(
        m,
        inputs,
        per_example=probes,
        field="probes",
        asked=f"probes={probes:,} (one product per probe and example)",
        advice="ask fewer probes, or send a smaller batch",
    )


def _check_unit_products(m: Model, inputs: PreparedInputs) -> None:
    """:func:`check_products` of an exact diagonal or trace by products with the D unit vectors."""
    check_products(
        m,
        inputs,
        per_example=inputs.event_size,
        field="method",
        asked=f"method='exact' by unit vectors, as its blocks exceed the memory budget (one product per "
        f"input, D={inputs.event_size:,}, and example)",
        advice="use method='hutchinson' (or 'auto'), or send a smaller batch",
    )


def _chunk(m: Model, inputs: PreparedInputs, wanted: int) -> int:
    """How many Hessian-vector products per example to take at once: up to
    ``wanted`` and :data:`MAX_CHUNK`, as many as fit the memory budget, at least one."""
    fitting = m.config.curvature_memory_bytes // (_ACTIVATION_FACTOR * _vector_bytes(m, inputs))
    return max(1, min(wanted, fitting, MAX_CHUNK))


def _probe_chunk(m: Model, inputs: PreparedInputs, wanted: int) -> int:
    """:func:`_chunk` rounded down to a power of two, so that the few compiled
    chunk sizes serve every number of probes."""
    return 1 << (_chunk(m, inputs, wanted).bit_length() - 1)


def _seed(seed: int | None) -> tf.Tensor:
    """The stateless seed (2,) int64 of an integer seed, or a fresh one for ``None``."""
    return tf.constant(np.random.SeedSequence(seed).generate_state(2).astype(np.int64))


def _run(
    m: Model, kind: str, inputs: PreparedInputs, weights: np.ndarray, options: dict[str, Any], seed: int | None
) -> tuple[np.ndarray, ...]:
    """Run ``kind`` on the padded batch: its compiled part through
    :func:`compiled.run` (which stops a call given up before each compiled
    call), its driver eagerly; the results sliced back to B."""
    batch = bucket_batch(m, inputs.batch)
    chunk = options.get("chunk")
    key_options = () if chunk is None else (("chunk", chunk),)
    key = function_key(m, kind, inputs, weights.shape[1], batch, key_options)
    fixed = {n: tf.constant(pad_rows(a, batch, edge=True)) for n, a in inputs.arrays.items() if n not in inputs.wrt}
    args = (
        tf.constant(pad_rows(inputs.x, batch, edge=True)),
        fixed,
        tf.constant(pad_rows(weights, batch, edge=False)),
    )
    if kind in curvature_bodies.BLOCK_KINDS:
        blocks = compiled.run(m, key, args)[0]
        results = curvature_bodies.from_blocks(kind, blocks, inputs.event_shape, options)
    else:
        shape = (batch, inputs.event_size)
        dtype = tf.as_dtype(inputs.precision)
        results = curvature_bodies.matrix_free(
            kind, lambda *extra: compiled.run(m, key, (*args, *extra)), inputs.event_shape, shape, dtype,
            options, _seed(seed),
        )
    return tuple(np.asarray(result)[: inputs.batch] for result in results)


add_warmers(
    {
        name: lambda m, x, wrt, precision, summary=summary: summary(m, x, wrt=wrt, precision=precision, seed=0)
        for name, summary in (
            ("hessian_diagonal", hessian_diagonal),
            ("hessian_trace", hessian_trace),
            ("hessian_eigen", hessian_eigen),
            ("hessian_spectrum", hessian_spectrum),
        )
    }
)
