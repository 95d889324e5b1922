"""The spectral density drawn by ``--plot`` is the quadrature it comes from, smoothed."""

from __future__ import annotations

import numpy as np
import pytest

from hessd import plots
from hessd.results import Spectrum


def test_density_integrates_to_one_and_peaks_at_heavy_nodes() -> None:
    nodes = np.array([[[-1.0, 0.0, 3.0]], [[2.0, 2.0, 2.0]]])
    weights = np.array([[[0.2, 0.1, 0.7]], [[0.5, 0.25, 0.25]]])
    grid = np.linspace(-5, 8, 4001)
    curves = plots.density(Spectrum(nodes, weights), grid, bandwidth=0.1)
    np.testing.assert_allclose(np.trapezoid(curves, grid, axis=1), 1, rtol=1e-6)
    assert grid[np.argmax(curves[0])] == pytest.approx(3.0, abs=0.01)
    assert grid[np.argmax(curves[1])] == pytest.approx(2.0, abs=0.01)
