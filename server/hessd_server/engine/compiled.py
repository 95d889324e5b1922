"""Compiled derivative functions: one per (model, kind, precision, bucket,
input shapes), built once and kept in the model's bounded LRU cache, with the strategy and XLA fallbacks chosen on
first use.

A function's first call runs the candidates in order until one succeeds:
XLA before graph mode, pfor before the tiled path. The winner is cached, the
choice recorded on the model, and a model whose function XLA rejected is not
offered to XLA again for that kind.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import tensorflow as tf

from hessd.errors import InternalError

from . import derivatives
from .function_key import FunctionKey
from .model import Model

_log = logging.getLogger(__name__)

STRATEGIES = ("pfor", "tiled")
"""Per-example Hessian strategies: a vectorized ``batch_jacobian``, or the
batch tiled D times with identity cotangents (no pfor). For ``full=True`` the
same names select a vectorized ``jacobian`` or a loop over its rows."""


def run(model: Model, key: FunctionKey, args: tuple[Any, ...]) -> tuple[tf.Tensor, ...]:
    """Call the compiled function for ``key`` on ``args``, building it first if needed.

    ``args`` is (x (batch, *S), fixed inputs by name, weights (batch, K)[, v (batch, *S)]).
    Returns the function's outputs, flattened: (value, gradient, Hessian) for
    the second-order kinds, (result,) for "gradient" and "hvp".
    """
    function = model.functions.get(key)
    if function is not None:
        return function(*args)
    with model.lock:
        function = model.functions.get(key)
        if function is not None:
            return function(*args)
        return _build_and_run(model, key, args)


def _candidates(model: Model, key: FunctionKey) -> list[tuple[str | None, bool]]:
    xla = model.config.jit_compile and (key.kind, key.precision) not in model.xla_failed_kinds
    modes = [True, False] if xla else [False]
    if key.kind in ("gradient", "hvp"):
        return [(None, jit) for jit in modes]
    strategies = [model.strategy] if model.strategy else list(STRATEGIES)
    return [(strategy, jit) for jit in modes for strategy in strategies]


def _build_and_run(model: Model, key: FunctionKey, args: tuple[Any, ...]) -> Any:
    xla_error: Exception | None = None
    last_error: Exception | None = None
    for strategy, jit in _candidates(model, key):
        function = _trace(model, key, strategy, jit)
        try:
            result = function(*args)
        except Exception as err:  # a candidate that cannot run here; the next one may
            _log.info("model %s: %s (strategy=%s, xla=%s) failed: %s", model.name, key.kind, strategy, jit, err)
            last_error = err
            xla_error = xla_error or (err if jit else None)
            continue
        if xla_error is not None and not jit:
            reason = str(xla_error).strip().splitlines()[0][:300]
            model.xla_fallbacks.append(f"{key.kind}/{key.precision}: graph mode, XLA failed: {reason}")
            model.xla_failed_kinds.add((key.kind, key.precision))
            _log.warning("model %s: %s runs in graph mode; XLA could not compile it: %s", model.name, key.kind, reason)
        if strategy is not None and model.strategy is None:
            model.strategy = strategy
            _log.info("model %s: per-example strategy %s", model.name, strategy)
        model.functions.put(key, _direct_call(function))
        return tuple(tf.nest.flatten(result))
    raise InternalError(
        f"model {model.name!r}: no way to compute {key.kind} worked, last error: {last_error}"
    ) from last_error


def _direct_call(function: Any) -> Callable[..., tuple[tf.Tensor, ...]]:
    """``function``'s one traced concrete function, called on its flattened
    arguments: this skips the per-call signature matching and argument
    conversion of ``tf.function`` (the key has fixed the shapes and dtypes
    already), about half the fixed cost of a small call."""
    concrete = function.get_concrete_function()
    captured = concrete.captured_inputs

    def call(*args: Any) -> tuple[tf.Tensor, ...]:
        outputs = concrete._call_flat([tf.constant(a) for a in tf.nest.flatten(args)], captured)
        return tuple(tf.nest.flatten(outputs))

    return call


def _body(key: FunctionKey, strategy: str | None) -> Callable[..., Any]:
    """The traced computation for ``key``: (x, fixed inputs, weights[, v]) -> result."""
    if key.kind == "gradient":
        return lambda forward, x, w: derivatives.value_and_gradient(forward, x, w)[1]
    if key.kind == "hvp":
        return derivatives.hessian_vector_product
    if key.kind == "full_hessian":
        return lambda forward, x, w: derivatives.full_hessian(forward, x, w, use_pfor=strategy == "pfor")
    if strategy == "pfor":
        return derivatives.per_example_hessian_pfor
    return derivatives.per_example_hessian_tiled


def _trace(model: Model, key: FunctionKey, strategy: str | None, jit: bool) -> Callable[..., Any]:
    call = model.call_for(key.precision)
    dtype = tf.as_dtype(key.precision)
    shapes = {name: (shape, input_dtype) for name, shape, input_dtype in key.inputs}
    x_shape, _ = shapes[key.wrt]
    fixed_specs = {
        name: tf.TensorSpec((key.batch, *shape), tf.as_dtype(input_dtype))
        for name, (shape, input_dtype) in shapes.items()
        if name != key.wrt
    }
    x_spec = tf.TensorSpec((key.batch, *x_shape), dtype)
    signature = [x_spec, fixed_specs, tf.TensorSpec((key.batch, key.outputs), dtype)]
    if key.kind == "hvp":
        signature.append(x_spec)
    body = _body(key, strategy)

    def traced(x: tf.Tensor, fixed: dict[str, tf.Tensor], weights: tf.Tensor, *tangent: tf.Tensor) -> Any:
        with model.lock:
            model.compile_count += 1

        def forward(inputs: tf.Tensor) -> tf.Tensor:
            copies = tf.shape(inputs)[0] // key.batch
            held = {name: _tile_batch(t, copies) for name, t in fixed.items()}
            return derivatives.flatten_outputs(call({**held, key.wrt: inputs}), dtype)

        return body(forward, x, weights, *tangent)

    function = tf.function(traced, input_signature=signature, jit_compile=jit)
    # Every bucket, kind and strategy is its own function traced once, by design;
    # TensorFlow counts them all as retraces of one Python function (they share
    # ``traced``'s code) and would warn about "frequent retracing" during warm-up.
    function._omit_frequent_tracing_warning = True
    return function


def _tile_batch(tensor: tf.Tensor, copies: tf.Tensor) -> tf.Tensor:
    """(B, ...) -> (copies * B, ...), the whole batch repeated, as the tiled strategy lays out x."""
    return tf.tile(tensor, tf.concat([[copies], tf.ones([tensor.shape.rank - 1], tf.int32)], axis=0))
