"""The ways of computing per-example Hessian blocks, by name.

Each strategy maps a :class:`Target` and (x (B, *S), weights (B, K)) to
values (B,), gradient (B, *S) and blocks (B, *S, *S), traced inside one
``tf.function``. They differ in speed, not in what they compute;
:mod:`.autotune` chooses one per bucket (by rule, by a tuning record, or by timing them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from . import derivatives, structural
from .model import ModelCall

Result = tuple[tf.Tensor, tf.Tensor, tf.Tensor]
"""values (B,), gradient (B, *S), Hessian blocks (B, *S, *S)."""


@dataclass(frozen=True)
class Target:
    """What a strategy differentiates.

    Attributes:
        forward: x (N, *S) -> outputs (N, K), the inputs held fixed bound (and
            tiled along with x when N is a multiple of the batch).
        call: the model's call on named inputs, for strategies that read the model.
        wrt: the names of the differentiated inputs (x is their concatenation
            when there are several).
        fixed: the inputs held fixed, (B, *S_i) by name.
    """

    forward: derivatives.Forward
    call: ModelCall
    wrt: tuple[str, ...]
    fixed: dict[str, tf.Tensor]


Strategy = Callable[[Target, tf.Tensor, tf.Tensor], Result]

STRATEGIES: dict[str, Strategy] = {
    "pfor": lambda t, x, w: derivatives.per_example_hessian_pfor(t.forward, x, w),
    "tiled": lambda t, x, w: derivatives.per_example_hessian_tiled(t.forward, x, w),
    "forward_over_reverse": lambda t, x, w: derivatives.per_example_hessian_forward_over_reverse(t.forward, x, w),
    "structural": lambda t, x, w: _structural(t, x, w),
}
"""Every per-example strategy, in the order they are tried (its names are
:data:`hessd_server.engine.config.STRATEGY_NAMES`, which the server checks its
settings against without importing TensorFlow):

* ``pfor``: a vectorized (pfor) ``batch_jacobian`` of the gradient;
* ``tiled``: reverse-over-reverse on the batch tiled D = prod(S) times, with
  identity cotangents and no pfor (works for recurrent layers);
* ``forward_over_reverse``: forward-mode (``tf.autodiff.ForwardAccumulator``)
  over the gradient on the tiled batch, with identity tangents and no pfor;
* ``structural``: the closed form of :mod:`.structural`, for models made of
  Dense layers, elementwise activations and affine layers only.
"""

RULE = "structural"
"""The strategy a bucket takes by rule (without a tuning record or a pinned
strategy) whenever it applies and matches the reference; otherwise the
reference itself (the first of :data:`REFERENCES` that runs). A fixed
preference, not a timing, so every process chooses alike. The structural path
is the fastest wherever it applies in the benchmarks, and the reference is the
only other strategy the rule needs to compile."""

REFERENCES = ("pfor", "tiled", "forward_over_reverse")
"""The autodiff strategies, in order of preference as the reference that the
others must match on a bucket's first batch."""

Refusal = structural.StructuralRefusal
"""Raised while tracing a strategy that does not apply to the model after all."""

TILED = frozenset({"tiled", "forward_over_reverse"})
"""Strategies whose memory grows with B * D, since they run D copies of the batch."""


SEVERAL_INPUTS = "the closed form differentiates one input at a time, and wrt names several"


def _structural(t: Target, x: tf.Tensor, w: tf.Tensor) -> Result:
    if len(t.wrt) != 1:
        raise structural.StructuralRefusal(SEVERAL_INPUTS)
    return structural.per_example_hessian(t.call, t.wrt[0], t.fixed, x, w)


def refusal(name: str, call: ModelCall, wrt: tuple[str, ...]) -> str | None:
    """Why strategy ``name`` cannot apply to this model differentiated at
    ``wrt`` before anything is traced, or None; only the structural path
    refuses up front."""
    if name != "structural":
        return None
    return SEVERAL_INPUTS if len(wrt) != 1 else structural.refusal(call, wrt[0])
