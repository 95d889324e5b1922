"""The library API: Hessians, gradients and Hessian-vector products of a model
with respect to its inputs, computed by compiled, bucketed functions.

Every function differentiates the scalar

    f = sum_b f_b,   f_b = sum_k w_k * y[b, k]

where y = model(x) is flattened per example to (B, K) and w is
``output_weights``: shape (K,) or (B, K), all ones by default (so f is
``reduce_sum(model(x))``). Weights give Lagrangian Hessians sum_k w_k d2 y_k.

NaN or infinite inputs are not refused: they are computed and propagate into
the results of the examples that hold them.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from hessd.results import Evaluation

from .execution import evaluation_of, gradient_of, hessian_of, hvp_of
from .model import Model
from .model_loading import as_model
from .validation import Wrt

ModelLike = Model | keras.Model


def hessian(
    model: ModelLike,
    x: Any,
    *,
    full: bool = False,
    output_weights: Any = None,
    wrt: Wrt = None,
    precision: str | None = None,
) -> np.ndarray:
    """The Hessian of f with respect to input ``x`` (or ``x[wrt]``, or several inputs).

    Shape rule, for x of shape (B, *S):
      * ``full=False``: (B, *S, *S), the per-example blocks H_b = d2 f_b / dx_b dx_b.
        The model's examples must not influence each other (checked once per
        model); otherwise ``BatchDependenceError`` asks for ``full=True``.
      * ``full=True``: (B, *S, B, *S), every block, as ``tf.hessians`` returns it.

    With ``wrt`` a list of several inputs, x stands for their concatenation,
    each flattened per example, in the order given: S is (N,) with
    N = sum_i prod(S_i), so the Hessian is (B, N, N) (or (B, N, B, N)), cross
    blocks included; :func:`hessd.split_hessian` cuts it into named blocks
    (B, *S_a, *S_b). Gradient, ``v`` and HVP are (B, N) likewise.

    dtype: float32, or float64 with ``precision="float64"`` (computed through
    a float64 copy of the model). A zero Hessian is returned as zeros.

    Args:
        model: a :class:`Model` from ``load_model``, or a Keras model.
        x: an array (B, *S); for a multi-input model a dict name -> array,
            with ``wrt`` naming the input(s) to differentiate (others held fixed).
        full: every block instead of the per-example ones.
        output_weights: w, shape (K,) or (B, K); default all ones.
        wrt: the input to differentiate (needed only for multi-input models), or
            a list of floating-point inputs to differentiate together; a list of
            one name is the same as the name. Each input at most once.
        precision: "float32" (default) or "float64".

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model("hessd_server.engine.demo_model:build_demo_model")
    >>> hs.hessian(m, np.ones((3, 10), np.float32)).shape
    (3, 10, 10)
    >>> hs.hessian(m, np.ones((3, 10), np.float32), full=True).shape
    (3, 10, 3, 10)
    """
    options = {"output_weights": output_weights, "wrt": wrt, "precision": precision}
    return hessian_of(as_model(model), x, full=full, **options).hessian


def evaluate(
    model: ModelLike,
    x: Any,
    *,
    full: bool = False,
    output_weights: Any = None,
    wrt: Wrt = None,
    precision: str | None = None,
) -> Evaluation:
    """Value, gradient and Hessian of f from one compiled call.

    Returns ``Evaluation(value, gradient, hessian)`` with value f_b of shape
    (B,), gradient (B, *S) and hessian as :func:`hessian` returns it for the
    same ``full``. Arguments and dtypes as for :func:`hessian`.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model("hessd_server.engine.demo_model:build_demo_model")
    >>> tuple(a.shape for a in hs.evaluate(m, np.ones((2, 10), np.float32)))
    ((2,), (2, 10), (2, 10, 10))
    """
    options = {"output_weights": output_weights, "wrt": wrt, "precision": precision}
    return evaluation_of(as_model(model), x, full=full, **options)


def gradient(
    model: ModelLike,
    x: Any,
    *,
    output_weights: Any = None,
    wrt: Wrt = None,
    precision: str | None = None,
) -> np.ndarray:
    """The gradient df/dx, shape (B, *S) like x; dtype as ``precision``.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model("hessd_server.engine.demo_model:build_demo_model")
    >>> hs.gradient(m, np.ones((3, 10), np.float32)).shape
    (3, 10)
    """
    return gradient_of(as_model(model), x, output_weights=output_weights, wrt=wrt, precision=precision)


def hvp(
    model: ModelLike,
    x: Any,
    v: Any,
    *,
    output_weights: Any = None,
    wrt: Wrt = None,
    precision: str | None = None,
) -> np.ndarray:
    """The Hessian-vector product (d2 f / dx dx) v, shape (B, *S) like x and v.

    With several ``wrt`` inputs, v and the product are (B, N); v may also be
    a dict of blocks (B, *S_i) by input name (see :func:`hessd.join_vector`).

    For a model whose examples are independent this is H_b v_b per example;
    for one that mixes examples it is the full product. Costs about two
    gradients, whatever the size of x.

    >>> import numpy as np, hessd_server as hs
    >>> m = hs.load_model("hessd_server.engine.demo_model:build_demo_model")
    >>> x = np.ones((3, 10), np.float32)
    >>> hs.hvp(m, x, x).shape
    (3, 10)
    """
    return hvp_of(as_model(model), x, v, output_weights=output_weights, wrt=wrt, precision=precision)
