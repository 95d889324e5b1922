"""The identity of one compiled function of a model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FunctionKey:
    """Identifies one compiled function of a model.

    Attributes:
        kind: "gradient", "hvp", "hessian" (per-example, with value and
            gradient), "full_hessian" (likewise), or a curvature kind of
            :mod:`.curvature_bodies` such as "trace/hutchinson".
        precision: "float32" or "float64".
        batch: the padded batch size the function is traced for.
        wrt: the differentiated inputs, in the caller's order (one, or several
            differentiated as one concatenated vector).
        inputs: (name, per-example shape, dtype) of every input.
        outputs: K, the model's outputs per example, flattened.
        options: (name, value) pairs a kind's computation depends on: the
            chunk of products of a matrix-free curvature kind; empty for the others.
    """

    kind: str
    precision: str
    batch: int
    wrt: tuple[str, ...]
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]
    outputs: int
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The per-example shape of the differentiated vector: the one input's S,
        or (N,) with N = sum_i prod(S_i) for several."""
        shapes = {name: shape for name, shape, _ in self.inputs}
        if len(self.wrt) == 1:
            return tuple(shapes[self.wrt[0]])
        return (sum(math.prod(shapes[name]) for name in self.wrt),)
