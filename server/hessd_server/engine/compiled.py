"""Compiled derivative functions: one per (model, kind, precision, bucket,
input shapes), built once and kept in the model's bounded LRU cache, with the
strategy and XLA fallbacks chosen on first use.

A function's first call runs the candidates in order until one succeeds: XLA
before graph mode; within a mode, per-example Hessians tune their strategy
for the bucket (:mod:`.autotune`), and full Hessians and the curvature kinds
on dense blocks try pfor before the tiled path. The winner is cached, the
choice recorded on the model, and a model whose function XLA rejected is not
offered to XLA again for that kind. Only deterministic failures move on to the
next candidate: an error while tracing (a pfor conversion that cannot be done),
or an XLA or graph error of kind InvalidArgument or Unimplemented on the first
run. A transient failure (out of memory, an aborted or cancelled run, while
building or while the tuner times the strategies) changes nothing: it is
raised, and the next call builds the function afresh.

Locking: each function has its own build lock (:mod:`.build_locks`), so a
function is built once, even when it is evicted while calls wait for it, and
different functions (buckets, kinds, precisions) build at the same time.
``model.lock`` only guards the model's records for an instant, never across a
trace, a compile or a run, so :meth:`Model.metadata` never waits on a compile.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from collections.abc import Iterator
from typing import Any, Callable

import tensorflow as tf

from hessd.errors import CancelledError, DeadlineExceededError, InternalError, OutOfMemoryError

from . import autotune, curvature_bodies, derivatives, strategies
from .cancellation import check_cancelled
from .function_key import FunctionKey
from .keras_call import KerasCall
from .model import Model

_log = logging.getLogger(__name__)

AUTODIFF_STRATEGIES = ("pfor", "tiled")
"""How full Hessians and the curvature kinds on dense blocks differentiate: a
vectorized (pfor) ``jacobian`` or ``batch_jacobian``, or without pfor (a loop
over the rows, or the batch tiled D times). Per-example Hessians choose among
:data:`hessd_server.engine.strategies.STRATEGIES` instead."""

CANDIDATE_FAILURES: tuple[type[BaseException], ...] = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)
"""TensorFlow errors of a first run that rule a candidate out: XLA cannot
compile the function, or graph mode cannot run it. Errors raised while
tracing (plain Python exceptions) rule it out as well."""

OUT_OF_MEMORY: tuple[type[BaseException], ...] = (tf.errors.ResourceExhaustedError, MemoryError)


_BUILDS_REFUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("hessd_builds_refused", default=False)

BuildWatcher = Callable[[Model, FunctionKey], contextlib.AbstractContextManager[object]]
"""(model, key) -> a context manager around building and first running that function."""

_BUILD_WATCHER: contextvars.ContextVar[BuildWatcher | None] = contextvars.ContextVar(
    "hessd_build_watcher", default=None
)

RunWatcher = Callable[[FunctionKey], None]
"""key -> None, told of each function :func:`run` calls, before it runs."""

_RUN_WATCHER: contextvars.ContextVar[RunWatcher | None] = contextvars.ContextVar("hessd_run_watcher", default=None)


class NotCompiled(Exception):
    """The function a call needs is not compiled, inside :func:`compiled_only`."""


@contextlib.contextmanager
def compiled_only() -> Iterator[None]:
    """Inside this block, :func:`run` raises :class:`NotCompiled` where it would
    trace and compile a function: for callers that must not be held up by a
    compile (the server's event loop)."""
    token = _BUILDS_REFUSED.set(True)
    try:
        yield
    finally:
        _BUILDS_REFUSED.reset(token)


@contextlib.contextmanager
def builds_watched(watcher: BuildWatcher) -> Iterator[None]:
    """Inside this block, each function :func:`run` builds is built inside
    ``watcher(model, key)`` (the server's tracing times compiles with it)."""
    token = _BUILD_WATCHER.set(watcher)
    try:
        yield
    finally:
        _BUILD_WATCHER.reset(token)


@contextlib.contextmanager
def runs_watched(watcher: RunWatcher) -> Iterator[None]:
    """Inside this block, :func:`run` calls ``watcher(key)`` with the key of each
    function it runs (the server's tracing names the bucket a batch ran at with it)."""
    token = _RUN_WATCHER.set(watcher)
    try:
        yield
    finally:
        _RUN_WATCHER.reset(token)


def run(model: Model, key: FunctionKey, args: tuple[Any, ...]) -> tuple[tf.Tensor, ...]:
    """Call the compiled function for ``key`` on ``args``, building it first if needed.

    ``args`` is (x (batch, *S), fixed inputs by name, weights (batch, K)[, v (batch, *S)
    for "hvp", or a matrix-free curvature kind's arguments, see
    :func:`curvature_bodies.extra_specs`]).
    Returns the function's outputs, flattened: (value, gradient, Hessian) for
    the second-order kinds, (result,) for "gradient", "hvp" and the curvature
    kinds (blocks or products, see :mod:`.curvature_bodies`).

    Raises:
        NotCompiled: the function is not compiled, inside :func:`compiled_only`.
        OutOfMemoryError: TensorFlow ran out of memory.
        InternalError: no candidate could build the function (the log has why).
        CancelledError, DeadlineExceededError: the caller gave up before the
            computation started (see :mod:`.cancellation`).
    """
    run_watcher = _RUN_WATCHER.get()
    if run_watcher is not None:
        run_watcher(key)
    function = model.functions.get(key)
    if function is None:
        if _BUILDS_REFUSED.get():
            raise NotCompiled(f"{key.kind} at batch {key.batch} is not compiled")
        with model.build_locks.building(key):
            check_cancelled()
            function = model.functions.get(key)
            if function is None:
                watcher = _BUILD_WATCHER.get()
                with contextlib.nullcontext() if watcher is None else watcher(model, key):
                    return _build_and_run(model, key, args)
    check_cancelled()
    return _called(model, key, function, args)


def _called(
    model: Model, key: FunctionKey, function: Callable[..., tuple[tf.Tensor, ...]], args: tuple[Any, ...]
) -> tuple[tf.Tensor, ...]:
    try:
        return function(*args)
    except OUT_OF_MEMORY as err:
        raise _out_of_memory(model, key, err) from err


def _out_of_memory(model: Model, key: FunctionKey, err: BaseException) -> OutOfMemoryError:
    _log.warning("model %s: %s at batch %d ran out of memory: %s", model.name, key.kind, key.batch, err)
    return OutOfMemoryError(
        f"model {model.name!r} ran out of memory computing the {key.kind.replace('_', ' ')} of a batch of "
        f"{key.batch}; retry later, or send a smaller batch"
    )


def _candidates(model: Model, key: FunctionKey) -> list[tuple[str | None, bool]]:
    """(strategy, XLA) pairs in the order to try; the strategy is None where
    there is no choice to make, or where :mod:`.autotune` makes it."""
    with model.lock:
        xla = model.config.jit_compile and (key.kind, key.precision) not in model.xla_failed_kinds
        chosen = model.strategy
    modes = [True, False] if xla else [False]
    if key.kind in ("hessian", "gradient", "hvp", *curvature_bodies.MATRIX_FREE_KINDS):
        return [(None, jit) for jit in modes]
    ways = [chosen] if chosen in AUTODIFF_STRATEGIES else list(AUTODIFF_STRATEGIES)
    return [(strategy, jit) for jit in modes for strategy in ways]


def _build_and_run(model: Model, key: FunctionKey, args: tuple[Any, ...]) -> Any:
    xla_error: BaseException | None = None
    failures: list[str] = []
    for strategy, jit in _candidates(model, key):
        try:
            if key.kind == "hessian":
                choice = autotune.choose(model, key, args, lambda name: _first_run(model, key, args, name, jit))
                strategy, function, result = choice.name, choice.function, choice.result
            else:
                function, result = _first_run(model, key, args, strategy, jit)
        except OUT_OF_MEMORY as err:
            raise _out_of_memory(model, key, err) from err
        except autotune.StrategyFailed as err:
            failures.append(_failed(model, key, strategy, jit, err))
            if jit and isinstance(err.__cause__, tf.errors.OpError):
                xla_error = xla_error or err.__cause__
            continue
        _record_success(model, key, function, strategy, jit, xla_error)
        return result
    _log.error(
        "model %s: no way to compute %s worked:\n%s", model.name, key.kind, "\n".join(failures)
    )
    raise InternalError(
        f"model {model.name!r} cannot be differentiated for {key.kind.replace('_', ' ')}: every way of "
        "computing it (XLA and graph mode, pfor and tiled) failed; the server log has the errors"
    )


def _first_run(
    model: Model, key: FunctionKey, args: tuple[Any, ...], strategy: str | None, jit: bool
) -> tuple[Callable[..., tuple[tf.Tensor, ...]], tuple[tf.Tensor, ...]]:
    """Trace, compile and run ``key``'s function with ``strategy`` once: the
    function (called directly) and its flattened result on ``args``.

    Raises :class:`autotune.StrategyFailed` (the cause chained) when the
    function cannot be traced or XLA or graph mode refuses it; a transient
    failure (out of memory, an aborted run, cancellation) passes through.
    """
    function = _trace(model, key, strategy, jit)
    try:
        function.get_concrete_function()
        check_cancelled()
        call = _direct_call(function)
        return call, call(*args)
    except OUT_OF_MEMORY:
        raise
    except tf.errors.OpError as err:
        if not isinstance(err, CANDIDATE_FAILURES):
            raise
        raise autotune.StrategyFailed(_first_line(err)) from err
    except (CancelledError, DeadlineExceededError):
        raise
    except Exception as err:  # tracing failed: this candidate cannot express the model
        raise autotune.StrategyFailed(_first_line(err)) from err


def _first_line(err: BaseException) -> str:
    """``err`` in one line: its type and first line, or, for an error that
    tracing wrapped ("in user code: ..."), its last line, the original error."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = lines[-1] if lines[0] == "in user code:" else f"{type(err).__name__}: {lines[0]}"
    return line[:300]


def _failed(model: Model, key: FunctionKey, strategy: str | None, jit: bool, err: BaseException) -> str:
    cause = err.__cause__ or err
    _log.info(
        "model %s: %s (strategy=%s, xla=%s) failed", model.name, key.kind, strategy, jit, exc_info=cause
    )
    return f"strategy={strategy}, xla={jit}: {type(cause).__name__}: {cause}"


def _record_success(
    model: Model,
    key: FunctionKey,
    function: Callable[..., Any],
    strategy: str | None,
    jit: bool,
    xla_error: BaseException | None,
) -> None:
    """Cache the function that ran, count its compile, and note the XLA and strategy choices."""
    with model.lock:
        if xla_error is not None and not jit:
            reason = str(xla_error).strip().splitlines()[0][:300]
            model.xla_fallbacks.append(f"{key.kind}/{key.precision}: graph mode, XLA failed: {reason}")
            model.xla_failed_kinds.add((key.kind, key.precision))
            _log.warning("model %s: %s runs in graph mode; XLA could not compile it: %s", model.name, key.kind, reason)
        if strategy is not None and model.strategy is None:
            model.strategy = strategy
            _log.info("model %s: per-example strategy %s", model.name, strategy)
        model.functions.put(key, function)
        model.compile_count += 1


PRIVATE_CALL = "_call_flat"
"""TensorFlow's private ``ConcreteFunction`` method that runs a traced function on
flat tensors; :func:`_direct_call` falls back to the public call without it."""


def _direct_call(function: Any) -> Callable[..., tuple[tf.Tensor, ...]]:
    """``function``'s one traced concrete function, called on its flattened
    arguments: this skips the per-call signature matching and argument
    conversion of ``tf.function`` (the key has fixed the shapes and dtypes
    already), about half the fixed cost of a small call.

    That fast path is TensorFlow's private :data:`PRIVATE_CALL`. A TensorFlow
    without it gets the concrete function's public call, slower by that fixed
    cost and otherwise the same (``tests/engine/test_private_call_fallback.py``).
    """
    concrete = function.get_concrete_function()
    call_flat = getattr(concrete, PRIVATE_CALL, None)
    if not callable(call_flat):
        _warn_public_call_once()
        return _public_call(concrete)
    captured = concrete.captured_inputs

    def call(*args: Any) -> tuple[tf.Tensor, ...]:
        outputs = call_flat([tf.constant(a) for a in tf.nest.flatten(args)], captured)
        return tuple(tf.nest.flatten(outputs))

    return call


def _public_call(concrete: Any) -> Callable[..., tuple[tf.Tensor, ...]]:
    """``concrete`` called through its public, structured signature."""

    def call(*args: Any) -> tuple[tf.Tensor, ...]:
        outputs = concrete(*tf.nest.map_structure(tf.constant, args))
        return tuple(tf.nest.flatten(outputs))

    return call


@functools.cache
def _warn_public_call_once() -> None:
    _log.warning(
        "this TensorFlow (%s) has no ConcreteFunction.%s: compiled functions are called "
        "through their public signature, which costs more per call",
        tf.__version__,
        PRIVATE_CALL,
    )


def _body(key: FunctionKey, strategy: str | None, jit: bool) -> Callable[..., Any]:
    """The traced computation for ``key``: (target, x, weights[, v or vectors]) -> result."""
    if key.kind in curvature_bodies.KINDS:
        curvature = curvature_bodies.body(key.kind, strategy, jit, key.options)
        return lambda t, x, w, *vectors: curvature(t.forward, x, w, *vectors)
    if key.kind == "gradient":
        return lambda t, x, w: derivatives.value_and_gradient(t.forward, x, w)[1]
    if key.kind == "hvp":
        return lambda t, x, w, v: derivatives.hessian_vector_product(t.forward, x, w, v)
    if key.kind == "full_hessian":
        return lambda t, x, w: derivatives.full_hessian(t.forward, x, w, use_pfor=strategy == "pfor")
    return strategies.STRATEGIES[str(strategy)]


def _trace(model: Model, key: FunctionKey, strategy: str | None, jit: bool) -> Callable[..., Any]:
    call = model.call_for(key.precision)
    dtype = tf.as_dtype(key.precision)
    shapes = {name: (shape, input_dtype) for name, shape, input_dtype in key.inputs}
    fixed_specs = {
        name: tf.TensorSpec((key.batch, *shape), tf.as_dtype(input_dtype))
        for name, (shape, input_dtype) in shapes.items()
        if name not in key.wrt
    }
    x_spec = tf.TensorSpec((key.batch, *key.event_shape), dtype)
    split = _splitter(key.wrt, {name: shapes[name][0] for name in key.wrt})
    signature = [x_spec, fixed_specs, tf.TensorSpec((key.batch, key.outputs), dtype)]
    if key.kind == "hvp":
        signature.append(x_spec)
    elif key.kind in curvature_bodies.MATRIX_FREE_KINDS:
        signature.extend(curvature_bodies.extra_specs(key.kind, key.options, key.batch, key.event_shape, dtype))
    body = _body(key, strategy, jit)

    def traced(x: tf.Tensor, fixed: dict[str, tf.Tensor], weights: tf.Tensor, *tangent: tf.Tensor) -> Any:
        if isinstance(call, KerasCall):
            call.refresh_weights()

        def forward(inputs: tf.Tensor) -> tf.Tensor:
            copies = tf.shape(inputs)[0] // key.batch
            held = {name: _tile_batch(t, copies) for name, t in fixed.items()}
            return derivatives.flatten_outputs(call({**held, **split(inputs)}), dtype)

        return body(strategies.Target(forward, call, key.wrt, fixed), x, weights, *tangent)

    whole_in_xla = jit and curvature_bodies.runs_in_xla(key.kind)
    function = tf.function(traced, input_signature=signature, jit_compile=whole_in_xla, autograph=False)
    # Every bucket, kind and strategy is its own function traced once, by design;
    # TensorFlow counts them all as retraces of one Python function (they share
    # ``traced``'s code) and would warn about "frequent retracing" during warm-up.
    function._omit_frequent_tracing_warning = True
    return function


def _splitter(
    wrt: tuple[str, ...], shapes: dict[str, tuple[int, ...]]
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The differentiated vector (N, *S) -> the differentiated inputs by name: the
    one input as it is, or, for several, (N, sum_i prod(S_i)) cut into (N, *S_i)."""
    if len(wrt) == 1:
        return lambda inputs: {wrt[0]: inputs}
    sizes = [math.prod(shapes[name]) for name in wrt]

    def split(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        parts = tf.split(inputs, sizes, axis=1)
        return {name: tf.reshape(part, [-1, *shapes[name]]) for name, part in zip(wrt, parts)}

    return split


def _tile_batch(tensor: tf.Tensor, copies: tf.Tensor) -> tf.Tensor:
    """(B, ...) -> (copies * B, ...), the whole batch repeated, as the tiled strategy lays out x."""
    return tf.tile(tensor, tf.concat([[copies], tf.ones([tensor.shape.rank - 1], tf.int32)], axis=0))
