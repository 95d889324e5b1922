"""Padding a batch to a larger bucket along its first (batch) axis."""

from __future__ import annotations

import numpy as np


def pad_rows(array: np.ndarray, size: int, *, edge: bool) -> np.ndarray:
    """``array`` (B, ...) with rows up to ``size``, same dtype: copies of the last
    example (valid inputs), or zeros (weights and tangents, so padded rows
    contribute nothing). ``array`` itself when it has ``size`` rows already."""
    extra = size - array.shape[0]
    if extra == 0:
        return array
    widths = [(0, extra)] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, widths, mode="edge") if edge else np.pad(array, widths)
