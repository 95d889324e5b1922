"""The options of the curvature summaries, shared by the engine and the SDK.

``hessian_diagonal``, ``hessian_trace``, ``hessian_eigen`` and
``hessian_spectrum`` take the same options in-process (``hessd_server``) and
over the wire (``hessd``). This module holds their allowed values, their
defaults and the checks that need no model, so that a bad option fails the
same way (type, field and message) on both sides, before anything is sent or
compiled. Checks that need the input's size D (``k <= D``) are the engine's.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from hessd.errors import InvalidArgumentError, clipped

DIAGONAL_METHODS = ("auto", "exact", "hutchinson")
"""``method`` of ``hessian_diagonal``."""

TRACE_METHODS = ("auto", "exact", "hutchinson", "hutch++")
"""``method`` of ``hessian_trace``."""

EIGEN_METHODS = ("auto", "exact", "lanczos")
"""``method`` of ``hessian_eigen``."""

WHICH = ("largest", "smallest", "largest_magnitude")
"""``which`` of ``hessian_eigen``: eigenvalues sorted descending, ascending, by descending |λ|."""

DEFAULT_PROBES = 64
"""Hessian-vector products per example of the Hutchinson and Hutch++ estimators."""

DEFAULT_SPECTRUM_PROBES = 8
"""Lanczos runs (random start vectors) per example of ``hessian_spectrum``."""

DEFAULT_SPECTRUM_ITERATIONS = 32
"""Krylov dimension of each ``hessian_spectrum`` run (clipped to D)."""

DEFAULT_TOL = 1e-5
"""Lanczos stops once every wanted Ritz pair has ‖Hv − λv‖ <= tol·|λ|."""

MIN_HUTCH_PLUS_PLUS_PROBES = 3
"""Hutch++ splits its products in thirds: a sketch, its range, and Hutchinson on the rest."""

SEED_LIMIT = 1 << 64
"""Seeds are integers in [0, 2**64), the range of the wire's ``uint64 seed``."""

MAX_PROBES = 1 << 20
"""The most ``probes`` a request may ask (1,048,576): Hessian-vector products
per example of Hutchinson and Hutch++, Lanczos runs per example of ``hessian_spectrum``."""

MAX_ITERATIONS = 1 << 14
"""The most ``iterations`` (Krylov dimension) a request may ask (16,384)."""

MAX_K = 1 << 14
"""The most eigenpairs ``k`` a request may ask (16,384); k must also be <= D."""

MAX_CURVATURE_PRODUCTS = 1 << 24
"""The most Hessian-vector products a matrix-free curvature request may take over all
its B examples (16,777,216), by default: probes · B for Hutchinson and Hutch++,
D · B for an exact diagonal or trace by unit vectors, (iterations + k) · B for
Lanczos and probes · iterations · B for the spectrum (iterations clipped to D).
The engine checks it (``EngineConfig.max_curvature_products``, the server's
``--max-curvature-products``), since a server may set its own; the SDK does not."""


def default_eigen_iterations(k: int, dim: int) -> int:
    """The Krylov dimension ``hessian_eigen`` uses when ``iterations`` is None: max(64, 4k), clipped to D."""
    return min(dim, max(64, 4 * k))


def _invalid_option(message: str, field: str) -> InvalidArgumentError:
    """A refused curvature option: reason ``CURVATURE_OPTION_INVALID``, ``field`` the option's name."""
    return InvalidArgumentError(message, field=field, reason="CURVATURE_OPTION_INVALID")


def check_method(method: Any, allowed: tuple[str, ...]) -> str:
    """``method`` if it is one of ``allowed``; else ``InvalidArgumentError`` naming field ``method``."""
    if not isinstance(method, str) or method not in allowed:
        raise _invalid_option(f"method must be one of {list(allowed)}, got {clipped(method)}", "method")
    return method


def check_which(which: Any) -> str:
    """``which`` if it is one of :data:`WHICH`; else ``InvalidArgumentError`` naming field ``which``."""
    if not isinstance(which, str) or which not in WHICH:
        raise _invalid_option(f"which must be one of {list(WHICH)}, got {clipped(which)}", "which")
    return which


def check_count(name: str, value: Any, maximum: int, minimum: int = 1) -> int:
    """A whole number in [``minimum``, ``maximum``] (``k``, ``probes``, ``iterations``), as an int.

    A value out of range is refused with ``metadata`` {"value", "minimum", "maximum"}.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _invalid_option(f"{name} must be an integer in [{minimum}, {maximum:,}], got {clipped(value)}", name)
    if not minimum <= value <= maximum:
        raise InvalidArgumentError(
            f"{name} must be an integer in [{minimum}, {maximum:,}], got {value:,}",
            field=name,
            reason="CURVATURE_OPTION_INVALID",
            metadata={"value": value, "minimum": minimum, "maximum": maximum},
        )
    return int(value)


def check_tol(tol: Any) -> float:
    """A finite number >= 0, as a float."""
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol) or tol < 0:
        raise _invalid_option(f"tol must be a finite number >= 0, got {clipped(tol)}", "tol")
    return float(tol)


def check_seed(seed: Any) -> int | None:
    """``None`` (fresh randomness) or an integer in [0, 2**64), as an int."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise _invalid_option(f"seed must be None or an integer in [0, 2**64), got {clipped(seed)}", "seed")
    return int(seed)


def check_diagonal_options(method: Any, probes: Any, seed: Any) -> tuple[str, int, int | None]:
    """(method, probes, seed) of ``hessian_diagonal``, checked."""
    return check_method(method, DIAGONAL_METHODS), check_count("probes", probes, MAX_PROBES), check_seed(seed)


def check_trace_options(method: Any, probes: Any, seed: Any) -> tuple[str, int, int | None]:
    """(method, probes, seed) of ``hessian_trace``, checked; Hutch++ needs probes >= 3."""
    method = check_method(method, TRACE_METHODS)
    minimum = MIN_HUTCH_PLUS_PLUS_PROBES if method == "hutch++" else 1
    return method, check_count("probes", probes, MAX_PROBES, minimum), check_seed(seed)


def check_eigen_options(
    k: Any, which: Any, method: Any, iterations: Any, tol: Any, seed: Any
) -> tuple[int, str, str, int | None, float, int | None]:
    """(k, which, method, iterations, tol, seed) of ``hessian_eigen``, checked; iterations >= k."""
    k = check_count("k", k, MAX_K)
    checked_iterations = None if iterations is None else check_count("iterations", iterations, MAX_ITERATIONS, k)
    return k, check_which(which), check_method(method, EIGEN_METHODS), checked_iterations, check_tol(tol), check_seed(seed)


def check_spectrum_options(probes: Any, iterations: Any, seed: Any) -> tuple[int, int, int | None]:
    """(probes, iterations, seed) of ``hessian_spectrum``, checked."""
    checked_probes = check_count("probes", probes, MAX_PROBES)
    return checked_probes, check_count("iterations", iterations, MAX_ITERATIONS), check_seed(seed)
