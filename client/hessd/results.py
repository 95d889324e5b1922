"""Result types shared by the engine (``hessd_server``) and the SDK (``hessd``).

Plain containers of numpy arrays and metadata; nothing here imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Evaluation(NamedTuple):
    """Value, gradient and Hessian of f at one batch, from one ``evaluate`` call.

    With B the batch size and S the per-example shape of the differentiated input:

    Attributes:
        value: f per example, shape (B,).
        gradient: df/dx, shape (B, *S).
        hessian: d2f/dx2, shape (B, *S, *S), or (B, *S, B, *S) when ``full=True``.

    All three share one floating point dtype (float32 or float64).
    """

    value: np.ndarray
    gradient: np.ndarray
    hessian: np.ndarray


@dataclass(frozen=True)
class TensorInfo:
    """Name, per-example shape (no batch dimension; ``None`` = unknown size) and dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class ModelMetadata:
    """What a served model takes and returns, and its compilation state.

    Attributes:
        name: the model's name.
        inputs: the model's inputs, in order.
        outputs: the model's outputs, in order.
        strategy: per-example Hessian strategy, ``"pfor"`` or ``"tiled"``; ``None``
            until warmup chose one.
        batch_independent: whether examples are independent (per-example
            Hessians need ``True``); ``None`` until probed.
        buckets: the configured batch-size buckets, ascending; a batch runs padded
            to the smallest bucket that holds it.
        compile_count: functions compiled so far.
        xla_fallbacks: functions that run without XLA because XLA failed on them.
    """

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    strategy: str | None
    batch_independent: bool | None
    buckets: tuple[int, ...]
    compile_count: int
    xla_fallbacks: tuple[str, ...]
