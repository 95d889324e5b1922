"""Curvature summaries against closed forms: diagonal, trace, eigenpairs and
spectrum of f(x) = ‖Lx‖² (H = 2LᵀL, L built from a chosen spectrum) and of
f(x) = Σ sin(x_i) (H = diag(−sin x)); seeds, sorting, and every bad argument."""

from __future__ import annotations

import numpy as np
import pytest

import hessd_server as hs
from hessd import errors
from support import engine_references as refs

SPECTRUM = np.array([9.0, 6.0, 4.0, 2.5, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05])
"""Eigenvalues of the quadratic model's Hessian, chosen distinct and well separated at the top."""


@pytest.fixture(scope="module")
def quadratic() -> tuple[hs.Model, np.ndarray]:
    model, hessian = refs.quadratic_with_spectrum(SPECTRUM)
    return hs.load_model(model), hessian


@pytest.fixture(scope="module")
def sine() -> hs.Model:
    return hs.load_model(refs.sine_model(7))


X12 = np.random.default_rng(1).standard_normal((3, 12)).astype(np.float32)


@pytest.mark.parametrize("method", ["lanczos", "exact"])
def test_eigenpairs_of_a_chosen_spectrum(quadratic: tuple[hs.Model, np.ndarray], method: str) -> None:
    model, hessian = quadratic
    result = hs.hessian_eigen(model, X12, k=3, method=method, seed=0)
    assert isinstance(result, hs.Eigen)
    assert result.eigenvalues.shape == (3, 3) and result.eigenvectors.shape == (3, 3, 12)
    assert result.eigenvalues.dtype == np.float32
    np.testing.assert_allclose(result.eigenvalues, np.broadcast_to(SPECTRUM[:3], (3, 3)), rtol=1e-4)
    truth = np.linalg.eigh(hessian)[1][:, ::-1][:, :3]
    overlaps = np.abs(np.einsum("bkd,dk->bk", result.eigenvectors, truth))
    np.testing.assert_allclose(overlaps, 1, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(result.eigenvectors, axis=-1), 1, atol=1e-5)
    assert np.all(result.residuals < 1e-4 * SPECTRUM[0])


def test_smallest_eigenvalues_in_float64(quadratic: tuple[hs.Model, np.ndarray]) -> None:
    model, _ = quadratic
    result = hs.hessian_eigen(model, X12, k=2, which="smallest", method="lanczos", precision="float64", seed=1)
    assert result.eigenvalues.dtype == np.float64
    np.testing.assert_allclose(result.eigenvalues, np.broadcast_to(SPECTRUM[::-1][:2], (3, 2)), rtol=1e-6)


@pytest.mark.parametrize("budget", [1 << 28, 1])
def test_exact_diagonal_and_trace_from_blocks_and_from_unit_vectors(budget: int) -> None:
    """A budget of one byte sends "exact" through products with unit vectors."""
    model, hessian = refs.quadratic_with_spectrum(SPECTRUM, seed=2)
    m = hs.load_model(model, config=hs.EngineConfig(curvature_memory_bytes=budget))
    diagonal = hs.hessian_diagonal(m, X12, method="exact")
    np.testing.assert_allclose(diagonal.diagonal, np.broadcast_to(np.diag(hessian), (3, 12)), rtol=1e-5, atol=1e-6)
    assert np.all(diagonal.stderr == 0) and diagonal.stderr.shape == (3, 12)
    trace = hs.hessian_trace(m, X12, method="exact")
    np.testing.assert_allclose(trace.trace, np.full(3, SPECTRUM.sum()), rtol=1e-5)
    assert np.all(trace.stderr == 0)


@pytest.mark.parametrize("budget", [1 << 28, 1])
def test_laplacian_of_a_sum_of_sines(budget: int) -> None:
    m = hs.load_model(refs.sine_model(7), config=hs.EngineConfig(curvature_memory_bytes=budget))
    x = np.random.default_rng(2).uniform(-3, 3, (5, 7))
    laplacian = hs.hessian_trace(m, x, precision="float64")
    np.testing.assert_allclose(laplacian.trace, -np.sin(x).sum(axis=1), rtol=1e-12)
    diagonal = hs.hessian_diagonal(m, x, precision="float64")
    np.testing.assert_allclose(diagonal.diagonal, -np.sin(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("method", "which"),
    [("lanczos", "largest"), ("lanczos", "smallest"), ("lanczos", "largest_magnitude"), ("exact", "largest_magnitude")],
)
def test_which_orders_the_eigenvalues(sine: hs.Model, method: str, which: str) -> None:
    """H = diag(−sin x) has eigenvalues of both signs, so the three orders differ."""
    x = np.array([[-1.2, 0.3, 2.0, -0.1, 1.0, -2.5, 0.7]])
    values = -np.sin(x[0])
    wanted = {
        "largest": np.sort(values)[::-1][:3],
        "smallest": np.sort(values)[:3],
        "largest_magnitude": values[np.argsort(-np.abs(values))][:3],
    }[which]
    result = hs.hessian_eigen(sine, x, k=3, which=which, method=method, precision="float64", seed=3)
    np.testing.assert_allclose(result.eigenvalues[0], wanted, rtol=1e-8)
    positions = np.argmax(np.abs(result.eigenvectors[0]), axis=-1)
    np.testing.assert_allclose(result.eigenvectors[0][np.arange(3), positions], 1, rtol=1e-8)


def test_a_zero_hessian_gives_zero_curvature() -> None:
    m = hs.load_model(refs.seed_linear_model())
    x = np.ones((2, 10), np.float32)
    result = hs.hessian_eigen(m, x, k=2, method="lanczos", seed=0)
    assert np.all(result.eigenvalues == 0) and np.all(result.residuals == 0)
    np.testing.assert_allclose(np.linalg.norm(result.eigenvectors, axis=-1), 1, rtol=1e-6)
    assert np.all(hs.hessian_trace(m, x, method="hutch++", seed=0).trace == 0)


def test_an_unconverged_lanczos_run_returns_with_telling_residuals(quadratic: tuple[hs.Model, np.ndarray]) -> None:
    model, _ = quadratic
    result = hs.hessian_eigen(model, X12, k=2, method="lanczos", iterations=2, tol=0.0, seed=0)
    assert result.eigenvalues.shape == (3, 2)
    assert np.all(result.residuals > 1e-2)


def test_spectrum_weights_and_nodes(sine: hs.Model) -> None:
    """For a diagonal Hessian zᵀHz = tr H for every Rademacher z, so each
    probe's quadrature has first moment tr H / D exactly."""
    x = np.random.default_rng(4).uniform(-3, 3, (3, 7))
    result = hs.hessian_spectrum(sine, x, probes=5, iterations=7, seed=0, precision="float64")
    assert isinstance(result, hs.Spectrum)
    assert result.nodes.shape == result.weights.shape == (3, 5, 7)
    assert np.all(result.weights >= 0)
    np.testing.assert_allclose(result.weights.sum(axis=(1, 2)), 1, rtol=1e-12)
    np.testing.assert_allclose((result.weights * result.nodes).sum(axis=(1, 2)) * 7, -np.sin(x).sum(axis=1), rtol=1e-10)
    weighted = result.weights > 1e-8
    eigenvalues = -np.sin(x)
    for b in range(3):
        assert np.all(np.min(np.abs(result.nodes[b][weighted[b]][:, None] - eigenvalues[b]), axis=1) < 1e-8)
    clipped = hs.hessian_spectrum(sine, x, probes=2, iterations=50, seed=0)
    assert clipped.nodes.shape == (3, 2, 7)


def test_seeds_reproduce_and_change_results(quadratic: tuple[hs.Model, np.ndarray]) -> None:
    model, _ = quadratic
    calls = {
        "trace": lambda seed: hs.hessian_trace(model, X12, method="hutchinson", probes=8, seed=seed).trace,
        "hutch++": lambda seed: hs.hessian_trace(model, X12, method="hutch++", probes=9, seed=seed).trace,
        "diagonal": lambda seed: hs.hessian_diagonal(model, X12, method="hutchinson", probes=8, seed=seed).diagonal,
        "eigen": lambda seed: hs.hessian_eigen(model, X12, k=2, method="lanczos", iterations=3, tol=0, seed=seed).eigenvalues,
        "spectrum": lambda seed: hs.hessian_spectrum(model, X12, probes=2, iterations=4, seed=seed).nodes,
    }
    for name, call in calls.items():
        first = call(7)
        compiled = model.metadata().compile_count
        assert np.array_equal(call(7), first), name
        assert not np.array_equal(call(8), first), name
        assert not np.array_equal(call(None), call(None)), name
        assert model.metadata().compile_count == compiled, f"{name}: a new seed recompiled"


def test_auto_follows_the_memory_budget() -> None:
    model, hessian = refs.quadratic_with_spectrum(SPECTRUM, seed=5)
    roomy = hs.load_model(model, config=hs.EngineConfig(curvature_memory_bytes=1 << 20))
    tight = hs.load_model(model, config=hs.EngineConfig(curvature_memory_bytes=4 * 4 * 12 * 12 - 1))
    assert np.all(hs.hessian_trace(roomy, X12).stderr == 0)
    assert np.all(hs.hessian_trace(tight, X12, probes=9, seed=0).stderr > 0)  # a sketch of 9 vectors fits
    assert np.all(hs.hessian_diagonal(tight, X12, seed=0).stderr > 0)
    exact = hs.hessian_eigen(roomy, X12, k=2)
    with pytest.raises(errors.InvalidArgumentError) as raised:  # a basis of D vectors is as large as the blocks
        hs.hessian_eigen(tight, X12, k=2, seed=0)
    assert (raised.value.reason, raised.value.field) == ("CURVATURE_OPTION_INVALID", "iterations")
    by_lanczos = hs.hessian_eigen(tight, X12, k=2, seed=0, iterations=9)
    np.testing.assert_allclose(by_lanczos.eigenvalues, exact.eigenvalues, rtol=1e-4)
    assert {key.kind for key in tight.functions} >= {"trace/hutch++", "diagonal/hutchinson", "eigen/lanczos"}
    assert {key.kind for key in roomy.functions} >= {"trace/blocks", "eigen/exact"}


BAD_OPTIONS = [
    ("hessian_diagonal", {"method": "hutch++"}, "method"),
    ("hessian_diagonal", {"probes": 0}, "probes"),
    ("hessian_trace", {"method": "nope"}, "method"),
    ("hessian_trace", {"method": "hutch++", "probes": 2}, "probes"),
    ("hessian_trace", {"probes": 2.5}, "probes"),
    ("hessian_trace", {"seed": -1}, "seed"),
    ("hessian_trace", {"seed": 1 << 64}, "seed"),
    ("hessian_trace", {"seed": "1"}, "seed"),
    ("hessian_eigen", {"k": 0}, "k"),
    ("hessian_eigen", {"k": 13}, "k"),
    ("hessian_eigen", {"k": True}, "k"),
    ("hessian_eigen", {"which": "biggest"}, "which"),
    ("hessian_eigen", {"method": "hutchinson"}, "method"),
    ("hessian_eigen", {"k": 3, "iterations": 2}, "iterations"),
    ("hessian_eigen", {"tol": -1.0}, "tol"),
    ("hessian_eigen", {"tol": float("nan")}, "tol"),
    ("hessian_spectrum", {"probes": 0}, "probes"),
    ("hessian_spectrum", {"iterations": 0}, "iterations"),
]


@pytest.mark.parametrize(("function", "options", "field"), BAD_OPTIONS)
def test_bad_arguments_fail_before_anything_compiles(function: str, options: dict, field: str) -> None:
    model, _ = refs.quadratic_with_spectrum(SPECTRUM)
    m = hs.load_model(model)
    with pytest.raises(errors.InvalidArgumentError) as raised:
        getattr(hs, function)(m, X12, **options)
    assert raised.value.field == field
    assert field in raised.value.message
    assert m.metadata().compile_count == 0


def test_bad_inputs_fail_as_for_hessian(quadratic: tuple[hs.Model, np.ndarray]) -> None:
    model, _ = quadratic
    with pytest.raises(errors.ShapeError):
        hs.hessian_trace(model, X12[:, :5])
    with pytest.raises(errors.OutputWeightsError):
        hs.hessian_eigen(model, X12, output_weights=np.ones(3))
    with pytest.raises(errors.PrecisionError):
        hs.hessian_diagonal(model, X12, precision="float16")


@pytest.mark.parametrize("function", ["hessian_diagonal", "hessian_trace", "hessian_eigen", "hessian_spectrum"])
def test_a_model_that_mixes_examples_is_refused(function: str) -> None:
    m = hs.load_model(refs.batch_mixing_model())
    with pytest.raises(errors.BatchDependenceError, match="full=True"):
        getattr(hs, function)(m, np.ones((2, 3), np.float32))
    assert m.metadata().compile_count == 0


def test_max_result_bytes_counts_eigenvectors() -> None:
    model, _ = refs.quadratic_with_spectrum(SPECTRUM)
    m = hs.load_model(model, config=hs.EngineConfig(max_result_bytes=3 * 4 * (12 + 2) * 4 - 1))
    hs.hessian_eigen(m, X12, k=3, method="lanczos", seed=0)
    compiled = m.metadata().compile_count
    with pytest.raises(errors.ResultTooLargeError, match="eigenpairs"):
        hs.hessian_eigen(m, X12, k=4, method="lanczos", seed=0)
    with pytest.raises(errors.ResultTooLargeError, match="spectrum"):
        hs.hessian_spectrum(m, X12, probes=20, iterations=12)
    assert m.metadata().compile_count == compiled
