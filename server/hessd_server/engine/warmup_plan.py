"""What a warm-up covers: the names of the methods and precisions it can compile
ahead of the first request, their defaults, and the check of a caller's choice.

No TensorFlow here, so that a server can check its flags before importing it.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_WARMUP_BATCH_SIZES: tuple[int, ...] = (1, 8, 32)
"""The batch sizes warmed when none are given. A request runs in the smallest warmed
bucket that holds it when served (see :func:`hessd_server.engine.stacking.compiled_bucket`),
so three buckets cover 1 to 32 examples at about half the compiles of all six."""

WARMUP_METHODS: tuple[str, ...] = (
    "hessian",
    "evaluate",
    "gradient",
    "hvp",
    "full_hessian",
    "hessian_diagonal",
    "hessian_trace",
    "hessian_eigen",
    "hessian_spectrum",
)
"""The methods a warm-up can compile, named as the library's functions (``full_hessian``:
``hessian(..., full=True)``). ``hessian`` and ``evaluate`` share one compiled function."""

DEFAULT_WARMUP_METHODS: tuple[str, ...] = ("hessian", "evaluate", "gradient", "hvp")
"""The methods warmed when none are named: the per-example ones."""

WARMUP_PRECISIONS: tuple[str, ...] = ("float32", "float64")
"""The precisions a warm-up can compile."""

DEFAULT_WARMUP_PRECISIONS: tuple[str, ...] = ("float32",)
"""The precisions warmed when none are named."""


def check_warmup_plan(methods: Iterable[str], precisions: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``methods`` and ``precisions`` as tuples, each name once, in the order given.

    Raises:
        ValueError: a name is not one of :data:`WARMUP_METHODS` or
            :data:`WARMUP_PRECISIONS`, or either is empty; the message lists the known names.

    >>> check_warmup_plan(["hvp", "hessian_trace", "hvp"], ["float64"])
    (('hvp', 'hessian_trace'), ('float64',))
    """
    checked = []
    for what, names, known in (
        ("method", methods, WARMUP_METHODS),
        ("precision", precisions, WARMUP_PRECISIONS),
    ):
        names = tuple(dict.fromkeys(names))
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            found = f"unknown warm-up {what}s {unknown}" if unknown else f"no warm-up {what} named"
            raise ValueError(f"{found}; known: {', '.join(known)}")
        checked.append(names)
    return checked[0], checked[1]
