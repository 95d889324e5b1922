"""The stochastic estimators behave as statistics should.

Trials are the examples of one batch: the same x repeated, each example with
its own independent probes, so a hundred seeded trials take one compiled call.
"""

from __future__ import annotations

import numpy as np
import pytest

import hessd_server as hs
from support import engine_references as refs

DIM = 16
TRIALS = 100


@pytest.fixture(scope="module")
def dense() -> tuple[hs.Model, np.ndarray]:
    """A quadratic whose Hessian has large off-diagonal entries (so probes matter)."""
    spectrum = np.linspace(-3.0, 5.0, DIM)
    model, hessian = refs.quadratic_with_spectrum(np.abs(spectrum) + 0.5, seed=3)
    return hs.load_model(model), hessian


def _trials(count: int = TRIALS) -> np.ndarray:
    return np.zeros((count, DIM), np.float32)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_the_standard_error_covers_the_exact_trace(dense: tuple[hs.Model, np.ndarray], method: str) -> None:
    model, hessian = dense
    result = hs.hessian_trace(model, _trials(), method=method, probes=30, seed=0)
    assert len(set(result.trace.tolist())) == TRIALS, "trials must use independent probes"
    covered = np.abs(result.trace - np.trace(hessian)) <= 1.96 * result.stderr
    assert covered.mean() >= 0.9


def test_the_standard_error_covers_the_exact_diagonal(dense: tuple[hs.Model, np.ndarray]) -> None:
    model, hessian = dense
    result = hs.hessian_diagonal(model, _trials(), method="hutchinson", probes=30, seed=0)
    covered = np.abs(result.diagonal - np.diag(hessian)) <= 1.96 * result.stderr
    assert covered.mean() >= 0.9


def test_the_error_shrinks_as_one_over_root_probes(dense: tuple[hs.Model, np.ndarray]) -> None:
    model, hessian = dense
    probes = np.array([16, 64, 256, 1024])
    rms = [
        np.sqrt(np.mean((hs.hessian_trace(model, _trials(64), method="hutchinson", probes=int(p), seed=1).trace - np.trace(hessian)) ** 2))
        for p in probes
    ]
    slope = np.polyfit(np.log(probes), np.log(rms), 1)[0]
    assert -0.65 <= slope <= -0.35


def test_hutch_plus_plus_beats_hutchinson_on_a_low_rank_dominated_hessian() -> None:
    spectrum = np.concatenate([[60.0, 40.0, 30.0, 20.0], np.full(DIM - 4, 0.1)])
    model, hessian = refs.quadratic_with_spectrum(spectrum, seed=4)
    m = hs.load_model(model)

    def rms(method: str) -> float:
        trace = hs.hessian_trace(m, _trials(64), method=method, probes=15, seed=2).trace
        return float(np.sqrt(np.mean((trace - np.trace(hessian)) ** 2)))

    assert rms("hutch++") < 0.2 * rms("hutchinson")
