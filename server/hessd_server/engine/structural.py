"""Closed-form per-example Hessians of models made of affine layers and
elementwise activations, with no second autodiff pass.

For such a model every nonlinearity is y = σ(z) elementwise, and everything
else (Dense and convolution kernels, Add, Concatenate, Normalization,
Rescaling, BatchNormalization in inference, Dropout, Flatten, Reshape,
average pooling, zero padding, cropping) is affine in its input. The Hessian
of f = Σ_k w_k y_k(x) is then a sum over the activations' pre-activations z:

    H_b = Σ_z J_z[b]ᵀ diag(∂f/∂y[b] ⊙ σ''(z[b])) J_z[b],

where J_z = ∂z/∂x is propagated forward (J ← J W through a Dense kernel,
J ← diag(σ'(z)) J through an activation, and through any other linear layer
L, a convolution or a pooling, J ← L(J): the layer applied to each of J's D
rows as an input of its own) and ∂f/∂y comes from one reverse pass. Values
keep their shapes (B, *S); the Jacobians are laid out (B, D, n) with n =
prod(S), so every Dense step is one matrix product, and the input's identity
Jacobian is never materialized per example.

The sum is where the time goes, so it does as few multiplications as it can
(see :func:`_assemble`): a term whose Jacobian is the same for every example
(the first layer's, J = W) is one product with the precomputed products of
J's row pairs, half the work of a Gram product per example; the others
compute only the blocks on and above the diagonal of each Gram product once
the input is wide enough for that to pay.

:func:`refusal` says, before anything is traced, why a model is not of this
kind; such models use the autodiff strategies.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from .keras_call import KerasCall

ELEMENTWISE_ACTIVATIONS = frozenset(
    {
        "linear", "tanh", "sigmoid", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "softplus",
        "softsign", "swish", "silu", "gelu", "exponential", "hard_sigmoid", "hard_silu", "hard_swish",
        "mish", "log_sigmoid", "hard_tanh", "squareplus", "sparse_plus", "tanh_shrink",
    }
)
"""Keras activations that act on each entry alone, so their Jacobian is diagonal."""

_AFFINE_PER_FEATURE = (
    keras.layers.Normalization,
    keras.layers.Rescaling,
    keras.layers.BatchNormalization,
)
"""Layers that are y = a ⊙ x + c per feature in inference; a is read off the layer itself."""

_IDENTITY = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.Identity)
"""Layers that are the identity in inference."""

_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
"""Convolutions z = K * x + c, linear in x for any strides, padding ('valid' or
'same'), dilation, groups and data format (transposed, depthwise and
separable convolutions are other classes, refused)."""

_LINEAR = (
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
)
"""Layers without weights that are linear in their input: their Jacobian is the layer itself."""

_MAX_POOLING = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
"""Piecewise linear, but their Jacobian selects a different entry per example: refused."""

_ZERO = tf.UnconnectedGradients.ZERO


class StructuralRefusal(ValueError):
    """The model has a part the closed form does not cover; the message says which."""


Blocks = tuple[tf.Tensor, ...]
"""A Jacobian as row blocks, the rows of the differentiated input split in
order: each block (s_i, n) when it is the same for every example, else
(B, s_i, n). Only the blocks on and above the diagonal of a Hessian term are
multiplied, the rest mirrored (see :func:`_assemble`)."""

BLOCKED_FROM_DIM = 128
"""Inputs of this many features or more have their Jacobians split in
:data:`BLOCKS` row blocks, so each symmetric Gram product computes only
(BLOCKS + 1) / (2 BLOCKS) of its entries; smaller ones use one block."""

BLOCKS = 4

TRIANGLE_BYTES = 64 << 20
"""Largest constant (n · D(D+1)/2 entries) kept for a term whose Jacobian is
the same for every example; a larger one is computed per example instead."""


@dataclass(frozen=True)
class _Jet:
    """A (B, n) value and its Jacobian with respect to the differentiated input,
    as :data:`Blocks`, or None when the value does not depend on the input.
    ``constant`` is the Jacobian (D, n) when it is the same for every example
    and known when tracing (the input itself, or a chain of Dense kernels from
    it), else None; ``is_identity`` marks the differentiated input itself."""

    value: tf.Tensor
    jacobian: Blocks | None
    constant: np.ndarray | None = None
    is_identity: bool = False


@dataclass
class _Term:
    """One activation's share of the Hessian: its pre-activations' Jacobian,
    σ''(z), and the outputs y whose adjoints ∂f/∂y weight it."""

    jacobian: Blocks
    constant: np.ndarray | None
    second: tf.Tensor
    output: tf.Tensor


@dataclass(frozen=True)
class _KernelRead:
    """A Dense kernel whose value went into a constant Jacobian when tracing,
    with that value (captured, in the kernel's dtype)."""

    kernel: Any
    traced: tf.Tensor


def _unchanged(reads: list[_KernelRead]) -> tf.Tensor | None:
    """A scalar bool: every kernel read when tracing still holds its traced
    value; None when no kernel was read."""
    if not reads:
        return None
    same = [tf.reduce_all(tf.equal(tf.cast(read.kernel, read.traced.dtype), read.traced)) for read in reads]
    return tf.reduce_all(tf.stack(same))


def refusal(call: Any, wrt: str) -> str | None:
    """Why the closed form does not apply to ``call`` differentiated at input
    ``wrt``, or None when it does. Only Keras models whose every operation is
    known qualify. A layer that needs a vector (Dense, Concatenate) and meets
    a value of another shape is refused while tracing."""
    if not isinstance(call, KerasCall):
        return "not a Keras model (a SavedModel's graph is opaque)"
    graph = _graph(call.model)
    if graph is None:
        return f"model {call.model.name!r} is not a Sequential or functional graph"
    for operation in graph.operations:
        reason = _layer_refusal(operation)
        if reason:
            return reason
    return None


def per_example_hessian(
    call: KerasCall, wrt: str, fixed: dict[str, tf.Tensor], x: tf.Tensor, weights: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Values (B,), gradient (B, *S) and Hessian blocks (B, *S, *S) of
    f_b = Σ_k w[b, k] y[b, k] for x (B, *S), in closed form (D = prod(S)).

    The products of a constant Jacobian's row pairs (see :func:`_assemble`)
    are made from the kernels' values when this is traced; each call checks
    those kernels against their traced values and, should the model's weights
    have changed since, makes the products from the kernels as they are now.

    Raises :class:`StructuralRefusal` for a model :func:`refusal` would refuse.
    """
    reason = refusal(call, wrt)
    if reason:
        raise StructuralRefusal(reason)
    graph = _graph(call.model)
    terms: list[_Term] = []
    reads: list[_KernelRead] = []
    dim = int(np.prod(x.shape[1:], dtype=np.int64))
    rows = _row_ranges(dim)
    identity = np.eye(dim, dtype=x.dtype.as_numpy_dtype)
    jets = {
        name: _Jet(x, tuple(tf.constant(identity[a:b]) for a, b in rows), identity, is_identity=True)
        if name == wrt
        else _Jet(fixed[name], None)
        for name in call.names
    }
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = _walk(
            graph, [jets[n] for n in call.names], lambda op, *a, **k: _apply(op, terms, reads, rows, *a, **k)
        )
        flat = [jet.value for jet in keras.tree.flatten(outputs)]
        y = flat[0] if len(flat) == 1 else tf.concat([tf.reshape(v, [tf.shape(v)[0], -1]) for v in flat], axis=1)
        values = tf.reduce_sum(tf.reshape(tf.cast(y, x.dtype), [tf.shape(x)[0], -1]) * weights, axis=1)
        total = tf.reduce_sum(values)
    adjoints = tape.gradient(total, [x, *(t.output for t in terms)], unconnected_gradients=_ZERO)
    gradient, adjoints = adjoints[0], adjoints[1:]
    blocks = _assemble(terms, adjoints, rows, x, _unchanged(reads))
    return values, gradient, tf.reshape(blocks, [tf.shape(x)[0], *x.shape[1:], *x.shape[1:]])


def _row_ranges(dim: int) -> list[tuple[int, int]]:
    """The row blocks [a, b) of a D-feature input: one, or :data:`BLOCKS` nearly equal ones."""
    count = BLOCKS if dim >= BLOCKED_FROM_DIM else 1
    bounds = np.linspace(0, dim, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _assemble(
    terms: list[_Term],
    adjoints: list[tf.Tensor],
    rows: list[tuple[int, int]],
    x: tf.Tensor,
    unchanged: tf.Tensor | None,
) -> tf.Tensor:
    """H_b = Σ_terms J diag(∂f/∂y ⊙ σ''(z)) Jᵀ, (B, D, D) for x (B, *S), D = prod(S).

    A term with a constant Jacobian J (D, n) small enough is one matrix
    product, (B, n) · (n, D(D+1)/2), with the products of J's row pairs
    computed once, then spread over both triangles; where ``unchanged`` is
    false (the kernels behind J changed after tracing) the products are made
    from J as it is now, in the call. The others are batched
    Gram products, per pair of row blocks i <= j, the blocks below the
    diagonal being the transposes of those above.
    """
    batch, dim = tf.shape(x)[0], rows[-1][1]
    triangle = None
    grams: dict[tuple[int, int], tf.Tensor] = {}
    for term, adjoint in zip(terms, adjoints):
        weight = _flat(adjoint) * term.second
        pairs = _row_pairs(term.constant, x.dtype)
        if pairs is not None:
            if unchanged is None:
                product = tf.matmul(weight, pairs)
            else:  # tf.cond calls both branches now, while tracing, so they may use the loop's names
                product = tf.cond(
                    unchanged,
                    lambda: tf.matmul(weight, pairs),
                    lambda: tf.matmul(weight, _live_row_pairs(term.jacobian)),
                )
            triangle = product if triangle is None else triangle + product
            continue
        scaled = [block * weight[:, None, :] for block in term.jacobian]
        for i, left in enumerate(scaled):
            for j in range(i, len(rows)):
                right = term.jacobian[j]
                gram = tf.matmul(left, right, transpose_b=True) if right.shape.rank == 3 else tf.matmul(
                    left, tf.broadcast_to(right, [batch, *right.shape]), transpose_b=True
                )
                grams[i, j] = grams[i, j] + gram if (i, j) in grams else gram
    hessian = None
    if grams:
        lines = [
            tf.concat(
                [grams[i, j] if j >= i else tf.linalg.matrix_transpose(grams[j, i]) for j in range(len(rows))], axis=2
            )
            for i in range(len(rows))
        ]
        hessian = tf.concat(lines, axis=1) if len(lines) > 1 else lines[0]
    if triangle is not None:
        spread = tf.gather(triangle, tf.constant(_triangle_index(dim)), axis=1)
        hessian = spread if hessian is None else hessian + spread
    return tf.zeros([batch, dim, dim], x.dtype) if hessian is None else hessian


_PAIRS: weakref.WeakValueDictionary[tuple[str, tuple[int, ...], str], tf.Tensor] = weakref.WeakValueDictionary()
"""Row-pair products by the constant's content: every bucket's function of a model shares one."""


def _row_pairs(constant: np.ndarray | None, dtype: tf.DType) -> tf.Tensor | None:
    """(n, D(D+1)/2): J[i, :] ⊙ J[j, :] for every i <= j (row-major upper
    triangle) of a constant Jacobian J (D, n); None when there is none, or the
    result would exceed :data:`TRIANGLE_BYTES`.

    Made eagerly (outside the traced function) so that the compiled function
    takes it as a captured input rather than folding it into the program.
    """
    if constant is None:
        return None
    dim, width = constant.shape
    if width * dim * (dim + 1) // 2 * dtype.size > TRIANGLE_BYTES:
        return None
    key = (hashlib.sha256(np.ascontiguousarray(constant).tobytes()).hexdigest(), constant.shape, dtype.name)
    pairs = _PAIRS.get(key)
    if pairs is None:
        upper, lower = np.triu_indices(dim)
        with tf.init_scope():
            pairs = tf.constant((constant[upper] * constant[lower]).T.astype(dtype.as_numpy_dtype))
        _PAIRS[key] = pairs
    return pairs


def _live_row_pairs(jacobian: Blocks) -> tf.Tensor:
    """:func:`_row_pairs` of the constant Jacobian given as (s, n) row blocks, computed in the call."""
    full = tf.concat(list(jacobian), axis=0) if len(jacobian) > 1 else jacobian[0]
    upper, lower = np.triu_indices(full.shape[0])
    return tf.transpose(tf.gather(full, upper) * tf.gather(full, lower))


def _triangle_index(dim: int) -> np.ndarray:
    """(D, D) int32: the position of entry (i, j), or of (j, i) below the diagonal, in the upper triangle."""
    upper, lower = np.triu_indices(dim)
    index = np.zeros((dim, dim), np.int32)
    index[upper, lower] = np.arange(len(upper))
    index[lower, upper] = np.arange(len(upper))
    return index


def _walk(graph: Any, inputs: list[_Jet], apply: Callable[..., _Jet]) -> Any:
    """Run ``graph``'s operations in order on jets instead of tensors: the nest
    of output jets.

    This is the one use of a private Keras API (``Functional._run_through_graph``,
    Keras 3): it is how Keras itself walks a functional graph, node by node,
    with a function standing in for each layer call, and Keras has no public
    equivalent. Should a Keras release change or drop it, the model is
    refused (:class:`StructuralRefusal`) and falls back to the autodiff
    strategies; nothing else depends on it.
    """
    try:
        return graph._run_through_graph(inputs, call_fn=apply)
    except StructuralRefusal:
        raise
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:
        raise StructuralRefusal(f"Keras could not walk the model's graph for the closed form: {err}") from err


def _graph(model: keras.Model) -> Any:
    """The functional graph that runs ``model``: itself, or a Sequential model's inner one."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    return graph if graph is not None and hasattr(graph, "_run_through_graph") and hasattr(graph, "operations") else None


def _activation_name(activation: Callable[..., Any] | None) -> str | None:
    if activation is None:
        return "linear"
    try:
        name = keras.activations.serialize(activation)
    except (ValueError, TypeError):
        return None
    return name if isinstance(name, str) else None


def _layer_refusal(op: Any) -> str | None:
    described = f"{getattr(op, 'name', op)!r} ({type(op).__name__})"
    if isinstance(op, keras.layers.InputLayer) or isinstance(op, _IDENTITY):
        return None
    if isinstance(op, keras.layers.Dense):
        if getattr(op, "lora_enabled", False) or getattr(op, "quantization_mode", None):
            return f"layer {described} is LoRA-adapted or quantized"
        if _activation_name(op.activation) not in ELEMENTWISE_ACTIVATIONS:
            return f"layer {described} has an activation with no known elementwise form"
        return None
    if isinstance(op, keras.layers.Activation):
        if _activation_name(op.activation) not in ELEMENTWISE_ACTIVATIONS:
            return f"layer {described} has an activation with no known elementwise form"
        return None
    if isinstance(op, _CONVOLUTIONS):
        if getattr(op, "lora_enabled", False) or getattr(op, "quantization_mode", None):
            return f"layer {described} is LoRA-adapted or quantized"
        if op.padding == "causal":
            return f"layer {described} has causal padding; the closed form covers 'valid' and 'same'"
        if _activation_name(op.activation) not in ELEMENTWISE_ACTIVATIONS:
            return f"layer {described} has an activation with no known elementwise form"
        return None
    if isinstance(op, _MAX_POOLING):
        return (
            f"layer {described} is max pooling, whose Jacobian selects a different entry for each example; "
            "the closed form covers average pooling"
        )
    if isinstance(op, (keras.layers.Add, *_AFFINE_PER_FEATURE, *_LINEAR)):
        return None
    if isinstance(op, keras.layers.Concatenate):
        return None if op.axis in (-1, 1) else f"layer {described} concatenates along axis {op.axis}"
    return f"layer {described} has no closed form here"


def _apply(
    op: Any, terms: list[_Term], reads: list[_KernelRead], rows: list[tuple[int, int]], *args: Any, **kwargs: Any
) -> _Jet:
    """One graph node on jets."""
    jets = [a for a in keras.tree.flatten(args) if isinstance(a, _Jet)]
    if isinstance(op, (keras.layers.Dense, keras.layers.Concatenate)):
        for jet in jets:
            if jet.value.shape.rank != 2:
                raise StructuralRefusal(
                    f"layer {op.name!r} sees a value of per-example shape {tuple(jet.value.shape[1:])}; "
                    "the closed form needs vectors there (Flatten first)"
                )
    if isinstance(op, _IDENTITY):
        return jets[0]
    if isinstance(op, _CONVOLUTIONS):
        return _convolve(op, jets[0], terms, reads)
    if isinstance(op, _LINEAR):
        return _linear(jets[0], op(jets[0].value), lambda t: op(t), reads)
    if isinstance(op, keras.layers.Dense):
        kernel = tf.cast(op.kernel, jets[0].value.dtype)
        z = tf.matmul(jets[0].value, kernel)
        if op.use_bias:
            z += tf.cast(op.bias, z.dtype)
        return _activate(op.activation, _times_kernel(jets[0], z, op, kernel, rows, reads), terms)
    if isinstance(op, keras.layers.Activation):
        return _activate(op.activation, jets[0], terms)
    if isinstance(op, keras.layers.Add):
        return _Jet(tf.add_n([j.value for j in jets]), _sum([j.jacobian for j in jets]))
    if isinstance(op, keras.layers.Concatenate):
        return _concatenate(jets)
    if isinstance(op, _AFFINE_PER_FEATURE):
        return _affine(op, jets[0])
    raise StructuralRefusal(f"layer {op.name!r} ({type(op).__name__}) has no closed form here")


def _times_kernel(
    jet: _Jet,
    z: tf.Tensor,
    layer: keras.layers.Dense,
    kernel: tf.Tensor,
    rows: list[tuple[int, int]],
    reads: list[_KernelRead],
) -> _Jet:
    """z = x W + c with its Jacobian J W, for J (s, n) or (B, s, n) blocks and
    W (n, m), each block one 2-D matrix product (W's rows when J = I). A
    constant J takes W's value now into its constant, noted in ``reads``."""
    if jet.jacobian is None:
        return _Jet(z, None)
    constant = None
    if jet.constant is not None:
        with tf.init_scope():  # the kernel's value now, read outside the traced function
            now = layer.kernel.numpy()
            reads.append(_KernelRead(layer.kernel, tf.constant(now)))
        constant = (jet.constant.astype(np.float64) @ np.asarray(now, np.float64)).astype(jet.constant.dtype)
    if jet.is_identity:
        return _Jet(z, tuple(kernel[a:b] for a, b in rows), constant)
    blocks = []
    for block in jet.jacobian:
        if block.shape.rank == 2:
            blocks.append(tf.matmul(block, kernel))
        else:
            shape = tf.shape(block)
            flat = tf.matmul(tf.reshape(block, [-1, shape[2]]), kernel)
            blocks.append(tf.reshape(flat, [shape[0], shape[1], kernel.shape[1]]))
    return _Jet(z, tuple(blocks), constant)


def _activate(activation: Callable[..., Any] | None, pre: _Jet, terms: list[_Term]) -> _Jet:
    """y = σ(z) elementwise: J_y = J_z diag(σ'(z)); records J_z, σ''(z) and y for the Hessian."""
    if _activation_name(activation) == "linear":
        return pre
    z = pre.value
    with tf.GradientTape() as outer:
        outer.watch(z)
        with tf.GradientTape() as inner:
            inner.watch(z)
            y = tf.cast(activation(z), z.dtype)
        slope = inner.gradient(y, z, unconnected_gradients=_ZERO)
    second = outer.gradient(slope, z, unconnected_gradients=_ZERO)
    y = tf.identity(y)
    if pre.jacobian is None:
        return _Jet(y, None)
    terms.append(_Term(pre.jacobian, pre.constant, _flat(second), y))
    return _Jet(y, tuple(block * _flat(slope)[:, None, :] for block in pre.jacobian))


def _flat(value: tf.Tensor) -> tf.Tensor:
    """(B, *S) -> (B, prod(S))."""
    return tf.reshape(value, [tf.shape(value)[0], -1])


def _convolve(layer: keras.layers.Layer, jet: _Jet, terms: list[_Term], reads: list[_KernelRead]) -> _Jet:
    """A convolution layer, z = K * x + c then its activation; J_z = K * J, the
    bias left out, each of J's rows convolved as an image of its own."""
    kernel = tf.cast(layer.kernel, jet.value.dtype)
    z = layer.convolution_op(jet.value, kernel)
    if layer.use_bias:
        shape = [1] * (layer.rank + 1) + [layer.filters] if layer.data_format == "channels_last" else [1, layer.filters] + [1] * layer.rank
        z += tf.reshape(tf.cast(layer.bias, z.dtype), shape)
    pre = _linear(jet, z, lambda t: layer.convolution_op(t, tf.cast(layer.kernel, t.dtype)), reads, layer.kernel)
    return _activate(layer.activation, pre, terms)


def _linear(
    jet: _Jet, value: tf.Tensor, linear: Callable[[tf.Tensor], tf.Tensor], reads: list[_KernelRead], kernel: Any = None
) -> _Jet:
    """The jet of ``value`` = L(x) (+ a constant), for L the linear map ``linear``
    on (N, *S_in) -> (N, *S_out): J ← L(J), each of J's rows (s, n_in) or
    (B, s, n_in) taken as an input of its own. A constant J goes through L
    when tracing, in float64 where L has a ``kernel`` (noted in ``reads``)."""
    if jet.jacobian is None:
        return _Jet(value, None)
    shape_in, shape_out = jet.value.shape[1:], value.shape[1:]
    blocks = []
    for block in jet.jacobian:
        images = linear(tf.reshape(block, [-1, *shape_in]))
        lead = [block.shape[0]] if block.shape.rank == 2 else [tf.shape(block)[0], block.shape[1]]
        blocks.append(tf.reshape(images, [*lead, int(np.prod(shape_out, dtype=np.int64))]))
    constant = None
    if jet.constant is not None:
        with tf.init_scope():  # eager: the layer as it is now, outside the traced function
            images = jet.constant.reshape(-1, *shape_in)
            if kernel is None:
                mapped = linear(tf.constant(images)).numpy()
            else:
                now = kernel.numpy()
                reads.append(_KernelRead(kernel, tf.constant(now)))
                mapped = linear(tf.constant(images.astype(np.float64))).numpy()
        constant = mapped.reshape(len(images), -1).astype(jet.constant.dtype)
    return _Jet(value, tuple(blocks), constant)


def _affine(layer: keras.layers.Layer, jet: _Jet) -> _Jet:
    """y = a ⊙ x + c per entry of x (B, *S), with a = layer(1) - layer(0) read off the layer itself."""
    value = tf.cast(layer(jet.value, training=False), jet.value.dtype)
    if jet.jacobian is None:
        return _Jet(value, None)
    shape = jet.value.shape[1:]
    probe = tf.stack([tf.ones(shape, jet.value.dtype), tf.zeros(shape, jet.value.dtype)])
    at = tf.reshape(tf.cast(layer(probe, training=False), jet.value.dtype), [2, -1])
    return _Jet(value, tuple(block * (at[0] - at[1]) for block in jet.jacobian))


def _sum(jacobians: list[Blocks | None]) -> Blocks | None:
    present = [j for j in jacobians if j is not None]
    if not present:
        return None
    totals = []
    for blocks in zip(*present):
        total = blocks[0]
        for block in blocks[1:]:
            total = total + block  # a (s, n) block broadcasts against a (B, s, n) one
        totals.append(total)
    return tuple(totals)


def _concatenate(jets: list[_Jet]) -> _Jet:
    value = tf.concat([j.value for j in jets], axis=1)
    present = [j.jacobian for j in jets if j.jacobian is not None]
    if not present:
        return _Jet(value, None)
    batch = tf.shape(value)[0]
    blocks = []
    for index, sample in enumerate(present[0]):
        height = sample.shape[-2]
        per_example = any(j[index].shape.rank == 3 for j in present)
        parts = []
        for jet in jets:
            width = jet.value.shape[-1]
            if jet.jacobian is None:
                shape = [batch, height, width] if per_example else [height, width]
                parts.append(tf.zeros(shape, value.dtype))
            elif per_example and jet.jacobian[index].shape.rank == 2:
                parts.append(tf.broadcast_to(jet.jacobian[index], [batch, height, width]))
            else:
                parts.append(jet.jacobian[index])
        blocks.append(tf.concat(parts, axis=-1))
    return _Jet(value, tuple(blocks))
