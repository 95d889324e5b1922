"""Warm-up: compile a model's functions ahead of its first request."""

from __future__ import annotations

import logging

import numpy as np

from hessd.errors import BatchDependenceError, ResultTooLargeError

from .execution import evaluation_of, gradient_of, hvp_of
from .model import Model

_log = logging.getLogger(__name__)

DEFAULT_WARMUP_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
"""The batch sizes warmed when none are given: every bucket up to 32."""


def warmup(model: Model, batch_sizes: tuple[int, ...] | list[int] | None = None) -> None:
    """Compile the per-example Hessian (with value and gradient), gradient and
    Hessian-vector product functions of ``model`` for the buckets that cover
    ``batch_sizes`` (default: every bucket up to 32), at float32.

    Also runs the batch-independence probe and tunes the per-example Hessian
    strategy, largest bucket first (every strategy that applies is compiled,
    checked against the reference and timed; small buckets take the choice of
    a larger one, see :data:`hessd_server.engine.autotune.SMALL_BUCKET_ROWS`),
    so the first real request at those batch sizes compiles nothing. Needs every
    per-example input shape to be known (``ValueError`` otherwise).

    >>> import hessd_server as hs
    >>> m = hs.load_model(hs.DEMO_MODEL_SOURCE)
    >>> hs.warmup(m, [3]); m.metadata().compile_count  # gradient, HVP and the chosen Hessian
    3
    """
    unknown = [i.name for i in model.inputs if None in i.shape]
    if unknown:
        raise ValueError(f"cannot warm model {model.name!r}: inputs {unknown} have dimensions of unknown size")
    rng = np.random.default_rng(0)
    # Largest first: the per-example strategy is tuned there, and small buckets take its choice (see autotune).
    sizes = sorted({model.config.bucket_for(b) for b in (DEFAULT_WARMUP_BATCH_SIZES if batch_sizes is None else batch_sizes)}, reverse=True)
    options = {"output_weights": None, "precision": None}
    for size in sizes:
        x = {
            i.name: rng.standard_normal((size, *i.shape)).astype(np.float32)
            if i.dtype in ("float16", "bfloat16", "float32", "float64")
            else np.zeros((size, *i.shape), dtype=i.dtype)
            for i in model.inputs
        }
        wrt = next((name for name, array in x.items() if array.dtype.kind == "f"), None)
        if wrt is None:
            raise ValueError(f"cannot warm model {model.name!r}: it has no floating-point input to differentiate")
        gradient_of(model, x, wrt=wrt, **options)
        hvp_of(model, x, x[wrt], wrt=wrt, **options)
        try:
            evaluation_of(model, x, full=False, wrt=wrt, **options)
        except (BatchDependenceError, ResultTooLargeError) as err:
            _log.info("model %s: per-example Hessian not warmed at batch %d: %s", model.name, size, err.message)
