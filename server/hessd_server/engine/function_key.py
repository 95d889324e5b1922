"""The identity of one compiled function of a model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FunctionKey:
    """Identifies one compiled function of a model.

    Attributes:
        kind: "gradient", "hvp", "hessian" (per-example, with value and
            gradient) or "full_hessian" (likewise).
        precision: "float32" or "float64".
        batch: the padded batch size the function is traced for.
        wrt: the differentiated input.
        inputs: (name, per-example shape, dtype) of every input.
        outputs: K, the model's outputs per example, flattened.
    """

    kind: str
    precision: str
    batch: int
    wrt: str
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]
    outputs: int
