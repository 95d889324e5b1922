"""Every curvature request is held to a budget before anything compiles: the
option limits of ``hessd.curvature_options``, k <= D, the model's
``max_curvature_products`` for the Hessian-vector products a matrix-free method
takes over all examples, and its ``curvature_memory_bytes`` for what an
estimator keeps (Hutch++'s sketch, Lanczos and SLQ bases). Option values are runtime values that compile nothing
new, and a long estimator stops at its next chunk once its call is given up."""

from __future__ import annotations

import threading
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import hessd_server as hs
from hessd import curvature_options as opts
from hessd import errors
from hessd_server.engine.cancellation import Cancellation, cancellable
from support import engine_references as refs

SPECTRUM = np.array([9.0, 6.0, 4.0, 2.5, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05])
X12 = np.random.default_rng(1).standard_normal((3, 12)).astype(np.float32)
VECTOR_BYTES = 4 * 12 * 4
"""One (B, D) float32 vector of X12's batch, padded to its bucket of 4."""

TIGHT = 4 * 12 * 12 * 4 - 1
"""A memory budget one byte under X12's dense blocks."""


def quadratic(
    budget: int = hs.EngineConfig().curvature_memory_bytes,
    products: int = hs.EngineConfig().max_curvature_products,
) -> hs.Model:
    model, _ = refs.quadratic_with_spectrum(SPECTRUM)
    config = hs.EngineConfig(curvature_memory_bytes=budget, max_curvature_products=products)
    return hs.load_model(model, config=config)


OVER_LIMITS = [
    ("hessian_trace", {"method": "hutchinson"}, "probes", opts.MAX_PROBES),
    ("hessian_diagonal", {"method": "hutchinson"}, "probes", opts.MAX_PROBES),
    ("hessian_spectrum", {}, "probes", opts.MAX_PROBES),
    ("hessian_spectrum", {}, "iterations", opts.MAX_ITERATIONS),
    ("hessian_eigen", {"method": "lanczos"}, "iterations", opts.MAX_ITERATIONS),
    ("hessian_eigen", {}, "k", opts.MAX_K),
]


@pytest.mark.parametrize(("function", "options", "field", "limit"), OVER_LIMITS)
@pytest.mark.parametrize("excess", [1, 2**31 - 1, 2**63 - 1])
def test_options_over_their_limit_are_refused_with_the_limit_and_the_value(
    function: str, options: dict[str, Any], field: str, limit: int, excess: int
) -> None:
    m = quadratic()
    value = max(limit + 1, excess)
    given_up = Cancellation()  # should the limit not hold, the call stops at once instead of running for hours
    given_up.set("cancelled")
    with cancellable(given_up), pytest.raises(errors.InvalidArgumentError) as raised:
        getattr(hs, function)(m, X12, **options, **{field: value})
    error = raised.value
    assert (type(error), error.reason, error.field) == (errors.InvalidArgumentError, "CURVATURE_OPTION_INVALID", field)
    assert f"{limit:,}" in error.message and f"{value:,}" in error.message
    assert error.metadata["maximum"] == str(limit) and error.metadata["value"] == str(value)
    assert m.metadata().compile_count == 0


def test_the_limits_themselves_are_allowed() -> None:
    assert opts.check_trace_options("hutch++", opts.MAX_PROBES, 0)[1] == opts.MAX_PROBES
    limits = (opts.MAX_PROBES, opts.MAX_ITERATIONS)
    assert opts.check_spectrum_options(*limits, 0)[:2] == limits
    assert opts.check_eigen_options(opts.MAX_K, "largest", "lanczos", opts.MAX_ITERATIONS, 0.0, None)[0] == opts.MAX_K


MEMORY_CASES = [
    # (call, field, the vectors it would keep)
    (lambda m: hs.hessian_trace(m, X12, method="hutch++", probes=96, seed=0), "probes", 96),
    (lambda m: hs.hessian_spectrum(m, X12, probes=4, iterations=10, seed=0), "probes", 40),
    (lambda m: hs.hessian_eigen(m, X12, k=3, method="lanczos", iterations=12, seed=0), "iterations", 15),
]


@pytest.mark.parametrize(("call", "field", "vectors"), MEMORY_CASES)
def test_an_estimator_over_the_memory_budget_is_refused_before_compiling(call: Any, field: str, vectors: int) -> None:
    budget = vectors * VECTOR_BYTES - 1
    m = quadratic(budget)
    with pytest.raises(errors.InvalidArgumentError) as raised:
        call(m)
    error = raised.value
    assert (error.reason, error.field) == ("CURVATURE_OPTION_INVALID", field)
    assert f"{budget:,}" in error.message and f"{vectors * VECTOR_BYTES:,}" in error.message
    assert error.metadata["curvature_memory_bytes"] == str(budget)
    assert error.metadata["memory_bytes"] == str(vectors * VECTOR_BYTES)
    assert m.metadata().compile_count == 0
    call(quadratic(budget + 1))


ROOMY = hs.EngineConfig().curvature_memory_bytes

PRODUCT_CASES = [
    # (call, memory budget, field, the Hessian-vector products it takes at X12's B = 3)
    (lambda m: hs.hessian_trace(m, X12, method="hutchinson", probes=8, seed=0), ROOMY, "probes", 8 * 3),
    (lambda m: hs.hessian_trace(m, X12, method="hutch++", probes=9, seed=0), ROOMY, "probes", 9 * 3),
    (lambda m: hs.hessian_trace(m, X12, probes=10, seed=0), TIGHT, "probes", 10 * 3),  # auto: Hutch++
    (lambda m: hs.hessian_trace(m, X12, method="exact"), TIGHT, "method", 12 * 3),  # by the D unit vectors
    (lambda m: hs.hessian_diagonal(m, X12, method="hutchinson", probes=8, seed=0), ROOMY, "probes", 8 * 3),
    (lambda m: hs.hessian_diagonal(m, X12, method="exact"), TIGHT, "method", 12 * 3),
    (lambda m: hs.hessian_eigen(m, X12, k=2, method="lanczos", iterations=6, seed=0), ROOMY, "iterations", 8 * 3),
    (lambda m: hs.hessian_eigen(m, X12, k=2, method="lanczos", iterations=90, seed=0), ROOMY, "iterations", 14 * 3),
    (lambda m: hs.hessian_spectrum(m, X12, probes=2, iterations=5, seed=0), ROOMY, "probes", 2 * 5 * 3),
    (lambda m: hs.hessian_spectrum(m, X12, probes=2, iterations=50, seed=0), ROOMY, "probes", 2 * 12 * 3),
]
"""Lanczos and the spectrum count their iterations clipped to D = 12."""


@pytest.mark.parametrize(("call", "budget", "field", "products"), PRODUCT_CASES)
def test_an_estimator_over_the_product_budget_is_refused_before_compiling(
    call: Any, budget: int, field: str, products: int
) -> None:
    m = quadratic(budget, products=products - 1)
    with pytest.raises(errors.InvalidArgumentError) as raised:
        call(m)
    error = raised.value
    assert (error.reason, error.field) == ("CURVATURE_OPTION_INVALID", field)
    assert f"{products:,} Hessian-vector products at B=3" in error.message
    assert f"limit of {products - 1:,}" in error.message and "max_curvature_products" in error.message
    assert error.metadata == {"products": str(products), "max_curvature_products": str(products - 1)}
    assert m.metadata().compile_count == 0
    call(quadratic(budget, products=products))


def test_the_default_product_budget_is_the_documented_constant() -> None:
    assert hs.EngineConfig().max_curvature_products == opts.MAX_CURVATURE_PRODUCTS
    with pytest.raises(ValueError, match="max_curvature_products"):
        hs.EngineConfig(max_curvature_products=0)


def test_auto_trace_falls_back_to_hutchinson_when_the_sketch_does_not_fit() -> None:
    m = quadratic(TIGHT)
    assert 63 * VECTOR_BYTES > TIGHT >= 9 * VECTOR_BYTES
    hs.hessian_trace(m, X12, probes=64, seed=0)
    assert {key.kind for key in m.functions} == {"trace/hutchinson"}
    hs.hessian_trace(m, X12, probes=9, seed=0)
    assert {key.kind for key in m.functions} == {"trace/hutchinson", "trace/hutch++"}


def test_the_spectrum_size_error_advises_what_helps() -> None:
    m = hs.load_model(refs.sine_model(12), config=hs.EngineConfig(max_result_bytes=100_000))
    with pytest.raises(errors.ResultTooLargeError) as raised:
        hs.hessian_spectrum(m, X12, probes=1000, iterations=10)
    assert "fewer probes or iterations" in raised.value.message
    assert "full=True" not in raised.value.message


VARIED_OPTIONS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "trace/hutchinson": ("hessian_trace", [{"method": "hutchinson", "probes": p, "seed": p} for p in (40, 33, 63)]),
    "trace/hutch++": ("hessian_trace", [{"method": "hutch++", "probes": p, "seed": p} for p in (99, 120, 191)]),
    "diagonal/hutchinson": ("hessian_diagonal", [{"method": "hutchinson", "probes": p} for p in (16, 17, 31)]),
    "eigen/lanczos": (
        "hessian_eigen",
        [
            {"method": "lanczos", "k": 1, "which": "largest", "iterations": 6, "tol": 1e-5, "seed": 1},
            {"method": "lanczos", "k": 3, "which": "smallest", "iterations": 12, "tol": 0.0, "seed": 2},
            {"method": "lanczos", "k": 2, "which": "largest_magnitude", "iterations": 9, "tol": 1e-2, "seed": None},
        ],
    ),
    "spectrum": ("hessian_spectrum", [{"probes": p, "iterations": i, "seed": i} for p, i in ((4, 3), (5, 12), (7, 8))]),
}
"""Per kind, calls whose options differ but whose chunk of products is the same
(probes rounded down to a power of two)."""


@pytest.mark.parametrize("kind", list(VARIED_OPTIONS))
def test_option_values_compile_nothing_new(kind: str) -> None:
    m = quadratic()
    function, variants = VARIED_OPTIONS[kind]
    getattr(hs, function)(m, X12, **variants[0])
    compiled, cached = m.metadata().compile_count, len(m.functions)
    assert {key.kind for key in m.functions} == {kind}
    for options in variants[1:]:
        getattr(hs, function)(m, X12, **options)
    assert (m.metadata().compile_count, len(m.functions)) == (compiled, cached)


class _Ticks:
    """Counts the runs of a graph that holds a :class:`_Ticking` layer. Once
    armed, it sets a cancellation when the count reaches a mark, and fails the
    graph's run if the computation goes on for more than ``allowance`` ticks after."""

    def __init__(self) -> None:
        self.count = 0
        self.set_at: int | None = None
        self._mark: int | None = None
        self._allowance = 0
        self._cancellation: Cancellation | None = None
        self._lock = threading.Lock()

    def arm(self, cancellation: Cancellation, after: int, allowance: int) -> None:
        self._cancellation, self._mark, self._allowance = cancellation, self.count + after, allowance

    def tick(self) -> np.int32:
        with self._lock:
            self.count += 1
            if self.set_at is not None and self.count > self.set_at + self._allowance:
                raise RuntimeError(f"the computation went on for {self.count - self.set_at} ticks after its cancellation")
            if self._cancellation is not None and self._mark is not None and self.count >= self._mark:
                if not self._cancellation.is_set():
                    self._cancellation.set("cancelled")
                    self.set_at = self.count
        return np.int32(0)


class _Ticking(keras.layers.Layer):
    """The identity, with a Python call each time a graph it was traced into runs."""

    def __init__(self, ticks: _Ticks) -> None:
        super().__init__()
        self._ticks = ticks

    def call(self, inputs: Any) -> Any:
        tick = tf.ensure_shape(tf.py_function(self._ticks.tick, [], tf.int32), [])
        return inputs + tf.cast(tick, inputs.dtype)

    def compute_output_spec(self, inputs: Any) -> Any:
        return keras.KerasTensor(inputs.shape, inputs.dtype)


def test_a_given_up_estimator_stops_at_its_next_chunk() -> None:
    ticks = _Ticks()
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(8, activation="tanh")(_Ticking(ticks)(inputs))
    budget = 8 * 16 * VECTOR_BYTES  # room for chunks of 8 products per example
    m = hs.load_model(
        keras.Model(inputs, keras.layers.Dense(1)(hidden)),
        config=hs.EngineConfig(jit_compile=False, curvature_memory_bytes=budget),
    )
    hs.hessian_trace(m, X12, method="hutchinson", probes=8, seed=0)
    before = ticks.count
    hs.hessian_trace(m, X12, method="hutchinson", probes=8, seed=0)
    per_chunk = ticks.count - before
    assert per_chunk >= 1
    cancellation = Cancellation()
    ticks.arm(cancellation, after=3 * per_chunk, allowance=per_chunk)
    compiled = m.metadata().compile_count
    with cancellable(cancellation), pytest.raises(errors.CancelledError):
        hs.hessian_trace(m, X12, method="hutchinson", probes=8 * 100_000, seed=0)
    assert ticks.set_at is not None
    assert m.metadata().compile_count == compiled
    assert np.isfinite(hs.hessian_trace(m, X12, method="hutchinson", probes=8, seed=0).trace).all()


@pytest.fixture
def four_products_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled calls of at most 4 products per example, so every estimator spans many calls."""
    from hessd_server.engine import curvature, curvature_bodies

    monkeypatch.setattr(curvature, "MAX_CHUNK", 4)
    monkeypatch.setattr(curvature_bodies, "MAX_CHUNK", 4)


@pytest.mark.usefixtures("four_products_per_call")
def test_estimators_spread_over_many_calls_agree_with_the_exact_spectrum() -> None:
    m = quadratic()
    eigen = hs.hessian_eigen(m, X12, k=10, method="lanczos", iterations=12, tol=0.0, seed=0)
    np.testing.assert_allclose(eigen.eigenvalues, np.broadcast_to(SPECTRUM[:10], (3, 10)), rtol=1e-4, atol=1e-5)
    assert eigen.residuals.shape == (3, 10) and np.all(eigen.residuals < 1e-3)
    for x in (X12, X12[:1]):  # a batch of one broadcasts against every shape
        trace = hs.hessian_trace(m, x, method="hutch++", probes=60, seed=0)
        np.testing.assert_allclose(trace.trace, np.full(len(x), SPECTRUM.sum()), rtol=1e-4)
    spectrum = hs.hessian_spectrum(m, X12, probes=9, iterations=12, seed=0)
    assert spectrum.nodes.shape == (3, 9, 12)
    exact_nodes = np.broadcast_to(np.sort(SPECTRUM), (3, 9, 12))
    np.testing.assert_allclose(np.sort(spectrum.nodes, axis=-1), exact_nodes, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(spectrum.weights.sum(axis=(1, 2)), 1, rtol=1e-5)
    exact = hs.hessian_diagonal(m, X12, method="exact").diagonal
    diagonal = hs.hessian_diagonal(m, X12, method="hutchinson", probes=9, seed=0)
    assert np.all(np.abs(diagonal.diagonal - exact) <= 6 * diagonal.stderr + 1e-5)
