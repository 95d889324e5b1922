"""Warm-up: compile a model's functions ahead of its first request."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from hessd.errors import BatchDependenceError, PrecisionError, ResultTooLargeError

from .config import (
    DEFAULT_WARMUP_BATCH_SIZES,
    DEFAULT_WARMUP_METHODS,
    DEFAULT_WARMUP_PRECISIONS,
    WARMUP_METHODS,
    check_warmup_plan,
)
from .execution import evaluation_of, gradient_of, hvp_of
from .model import Model

_log = logging.getLogger(__name__)

Warmer = Callable[[Model, dict[str, np.ndarray], str, str], Any]
"""Runs one method once: (model, inputs at a bucket's batch, wrt, precision) -> ignored."""


def _per_example(m: Model, x: dict[str, np.ndarray], wrt: str, precision: str) -> Any:
    return evaluation_of(m, x, full=False, wrt=wrt, output_weights=None, precision=precision)


def _full(m: Model, x: dict[str, np.ndarray], wrt: str, precision: str) -> Any:
    return evaluation_of(m, x, full=True, wrt=wrt, output_weights=None, precision=precision)


def _gradient(m: Model, x: dict[str, np.ndarray], wrt: str, precision: str) -> Any:
    return gradient_of(m, x, wrt=wrt, output_weights=None, precision=precision)


def _hvp(m: Model, x: dict[str, np.ndarray], wrt: str, precision: str) -> Any:
    return hvp_of(m, x, x[wrt], wrt=wrt, output_weights=None, precision=precision)


_WARMERS: dict[str, Warmer] = {
    "hessian": _per_example,
    "evaluate": _per_example,
    "gradient": _gradient,
    "hvp": _hvp,
    "full_hessian": _full,
}
"""How each name of :data:`WARMUP_METHODS` is warmed, with its defaults; the curvature
summaries' are added by :mod:`.curvature` (see :func:`add_warmers`), which imports this
module through the model loader, so this one cannot import it."""


def add_warmers(warmers: dict[str, Warmer]) -> None:
    """Make the methods of ``warmers`` (names of :data:`WARMUP_METHODS`) warmable."""
    unknown = sorted(set(warmers) - set(WARMUP_METHODS))
    if unknown:
        raise ValueError(f"{unknown} are not names of WARMUP_METHODS")
    _WARMERS.update(warmers)


UNPADDED_METHODS = frozenset({"full_hessian"})
"""Methods that run at exactly a request's batch size, never padded to its bucket."""


def warmup(
    model: Model,
    batch_sizes: tuple[int, ...] | list[int] | None = None,
    *,
    methods: Iterable[str] = DEFAULT_WARMUP_METHODS,
    precisions: Iterable[str] = DEFAULT_WARMUP_PRECISIONS,
) -> None:
    """Compile ``methods`` of ``model`` at ``precisions`` for the buckets that cover
    ``batch_sizes`` (default 1, 8 and 32), so that the first request of each at those
    buckets compiles nothing.

    ``methods`` are names of :data:`WARMUP_METHODS` (default: the
    per-example Hessian with value and gradient, which ``evaluate`` shares, the
    gradient and the Hessian-vector product); the curvature summaries are warmed
    with their default options, and ``full_hessian`` at exactly ``batch_sizes``
    (a full Hessian is never padded). ``precisions`` are ``"float32"`` (default) and ``"float64"``.

    The per-example Hessian also runs the batch-independence probe and chooses the
    strategy, largest bucket first (by rule, record or tuning, see
    :mod:`hessd_server.engine.autotune`; small buckets take the choice of a larger
    one, see :data:`hessd_server.engine.autotune.SMALL_BUCKET_ROWS`).
    Needs every per-example input shape to be known.

    Raises:
        ValueError: an input's shape is not known, no input is floating-point, or a
            method or precision name is unknown (the message lists the known ones).

    >>> import hessd_server as hs
    >>> m = hs.load_model(hs.DEMO_MODEL_SOURCE)
    >>> hs.warmup(m, [3]); m.metadata().compile_count  # gradient, HVP and the chosen Hessian
    3
    """
    methods, precisions = check_warmup_plan(methods, precisions)
    # The curvature summaries add their warmers when imported (they import this module,
    # so it cannot import them); a lazily imported library may not have loaded them yet.
    importlib.import_module(f"{__package__}.curvature")
    unknown = [i.name for i in model.inputs if None in i.shape]
    if unknown:
        raise ValueError(f"cannot warm model {model.name!r}: inputs {unknown} have dimensions of unknown size")
    requested = DEFAULT_WARMUP_BATCH_SIZES if batch_sizes is None else tuple(batch_sizes)
    # Per batch size, the methods warmed there (each compiled function once): a full
    # Hessian runs at exactly its batch size, the others at its bucket.
    plan: dict[int, dict[Warmer, str]] = {}
    for name in methods:
        unpadded = name in UNPADDED_METHODS
        for size in {b if unpadded else model.config.bucket_for(b) for b in requested}:
            plan.setdefault(size, {}).setdefault(_WARMERS[name], name)
    rng = np.random.default_rng(0)
    for precision in precisions:
        # Largest first: the per-example strategy is tuned there, and small buckets take its choice (see autotune).
        for size in sorted(plan, reverse=True):
            x = {
                i.name: rng.standard_normal((size, *i.shape)).astype(np.float32)
                if i.dtype in ("float16", "bfloat16", "float32", "float64")
                else np.zeros((size, *i.shape), dtype=i.dtype)
                for i in model.inputs
            }
            wrt = next((name for name, array in x.items() if array.dtype.kind == "f"), None)
            if wrt is None:
                raise ValueError(f"cannot warm model {model.name!r}: it has no floating-point input to differentiate")
            for warm, name in plan[size].items():
                try:
                    warm(model, x, wrt, precision)
                except (BatchDependenceError, PrecisionError, ResultTooLargeError) as err:
                    _log.info("model %s: %s not warmed at batch %d, %s: %s", model.name, name, size, precision, err.message)
