"""PNG pictures of results, for the command line's ``--plot``.

Needs matplotlib, the optional ``plot`` extra (``pip install 'hessd[plot]'``);
nothing else in the SDK imports this module, so the SDK works without it.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
import numpy as np  # noqa: E402

from hessd.results import Spectrum  # noqa: E402

_GRID_POINTS = 512
_BANDWIDTH_FRACTION = 0.02
"""The Gaussian kernel's width, as a fraction of the nodes' range."""

_MAX_CURVES = 8


def density(spectrum: Spectrum, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """The spectral densities sum_{p,i} w · N(λ; node, bandwidth²) of every
    example on ``grid`` (G,): shape (B, G)."""
    nodes = spectrum.nodes.reshape(spectrum.nodes.shape[0], -1).astype(np.float64)
    weights = spectrum.weights.reshape(nodes.shape).astype(np.float64)
    distance = (grid[None, None, :] - nodes[:, :, None]) / bandwidth
    kernel = np.exp(-0.5 * distance**2) / (bandwidth * math.sqrt(2 * math.pi))
    return np.einsum("bn,bng->bg", weights, kernel)


def spectral_density(spectrum: Spectrum, path: Path) -> None:
    """Draw the smoothed spectral density of up to eight examples into the PNG at ``path``."""
    low, high = float(np.min(spectrum.nodes)), float(np.max(spectrum.nodes))
    bandwidth = max((high - low) * _BANDWIDTH_FRACTION, 1e-12 + 1e-6 * max(abs(low), abs(high)))
    grid = np.linspace(low - 4 * bandwidth, high + 4 * bandwidth, _GRID_POINTS)
    curves = density(spectrum, grid, bandwidth)
    figure, axes = plt.subplots(figsize=(7, 4))
    for index, curve in enumerate(curves[:_MAX_CURVES]):
        axes.plot(grid, curve, label=f"example {index}")
    axes.set_xlabel("eigenvalue λ")
    axes.set_ylabel("density")
    axes.set_title(
        f"Hessian spectral density (SLQ, {spectrum.nodes.shape[1]} probes × "
        f"{spectrum.nodes.shape[2]} steps, Gaussian width {bandwidth:.3g})"
    )
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)
    plt.close(figure)


def hessian_heatmap(hessian: np.ndarray, path: Path, *, full: bool = False) -> None:
    """Draw the first example's block of per-example blocks (B, *S, *S), or
    the whole full Hessian (B, *S, B, *S) when ``full``, as a heatmap into the PNG at ``path``."""
    if full:
        size = int(math.isqrt(hessian.size))
        matrix, title = hessian.reshape(size, size), "full Hessian"
    else:
        dim = int(math.isqrt(hessian[0].size))
        matrix, title = hessian[0].reshape(dim, dim), "Hessian block of example 0"
    limit = float(np.max(np.abs(matrix))) or 1.0
    figure, axes = plt.subplots(figsize=(5.5, 5))
    image = axes.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    figure.colorbar(image, ax=axes)
    axes.set_title(title)
    axes.set_xlabel("input index j")
    axes.set_ylabel("input index i")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)
    plt.close(figure)
