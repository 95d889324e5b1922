"""Closed-form per-example Hessians of models made of affine layers and
elementwise activations, with no second autodiff pass.

For such a model every nonlinearity is y = σ(z) elementwise, and everything
else (Dense kernels, Add, Concatenate, Normalization, Rescaling,
BatchNormalization in inference, Dropout) is affine in its input. The Hessian
of f = Σ_k w_k y_k(x) is then a sum over the activations' pre-activations z:

    H_b = Σ_z J_z[b]ᵀ diag(∂f/∂y[b] ⊙ σ''(z[b])) J_z[b],

where J_z = ∂z/∂x is propagated forward (J ← J W through a Dense kernel,
J ← diag(σ'(z)) J through an activation) and ∂f/∂y comes from one reverse
pass. The Jacobians are laid out (B, D, n) so every step is one matrix
product, and the input's identity Jacobian is never materialized per example.

:func:`refusal` says, before anything is traced, why a model is not of this
kind; such models use the autodiff strategies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import keras
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

_ZERO = tf.UnconnectedGradients.ZERO


class StructuralRefusal(ValueError):
    """The model has a part the closed form does not cover; the message says which."""


@dataclass(frozen=True)
class _Jet:
    """A (B, n) value and its Jacobian with respect to the differentiated input:
    (B, D, n), or (D, n) when it is the same for every example, or None when
    the value does not depend on the input. ``is_identity`` marks the
    differentiated input itself, whose Jacobian is the identity (D, D)."""

    value: tf.Tensor
    jacobian: tf.Tensor | None
    is_identity: bool = False


@dataclass
class _Curvature:
    """The pre-activations z, their Jacobians and σ''(z), and the activation
    outputs y whose adjoints ∂f/∂y weight them, collected in the forward pass."""

    jacobians: list[tf.Tensor]
    second: list[tf.Tensor]
    outputs: list[tf.Tensor]


def refusal(call: Any, wrt: str) -> str | None:
    """Why the closed form does not apply to ``call`` differentiated at input
    ``wrt``, or None when it does. Only Keras models whose every operation is
    known qualify, and the differentiated input must be a vector per example."""
    if not isinstance(call, KerasCall):
        return "not a Keras model (a SavedModel's graph is opaque)"
    graph = _graph(call.model)
    if graph is None:
        return f"model {call.model.name!r} is not a Sequential or functional graph"
    for name, tensor in zip(call.names, keras.tree.flatten(call.structure)):
        if name == wrt and len(tensor.shape) != 2:
            return f"input {name!r} has per-example shape {tuple(tensor.shape[1:])}; the closed form needs vectors"
    for operation in graph.operations:
        reason = _layer_refusal(operation)
        if reason:
            return reason
    return None


def per_example_hessian(
    call: KerasCall, wrt: str, fixed: dict[str, tf.Tensor], x: tf.Tensor, weights: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Values (B,), gradient (B, D) and Hessian blocks (B, D, D) of
    f_b = Σ_k w[b, k] y[b, k] for x (B, D), in closed form.

    Raises :class:`StructuralRefusal` for a model :func:`refusal` would refuse.
    """
    reason = refusal(call, wrt)
    if reason:
        raise StructuralRefusal(reason)
    graph = _graph(call.model)
    curvature = _Curvature([], [], [])
    dim = x.shape[-1]
    jets = {
        name: _Jet(x, tf.eye(dim, dtype=x.dtype), is_identity=True) if name == wrt else _Jet(fixed[name], None) for name in call.names
    }
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = _walk(graph, [jets[n] for n in call.names], lambda op, *a, **k: _apply(op, curvature, *a, **k))
        flat = [jet.value for jet in keras.tree.flatten(outputs)]
        y = flat[0] if len(flat) == 1 else tf.concat([tf.reshape(v, [tf.shape(v)[0], -1]) for v in flat], axis=1)
        values = tf.reduce_sum(tf.reshape(tf.cast(y, x.dtype), [tf.shape(x)[0], -1]) * weights, axis=1)
        total = tf.reduce_sum(values)
    adjoints = tape.gradient(total, [x, *curvature.outputs], unconnected_gradients=_ZERO)
    gradient, adjoints = adjoints[0], adjoints[1:]
    blocks = tf.zeros([tf.shape(x)[0], dim, dim], x.dtype)
    for jacobian, second, adjoint in zip(curvature.jacobians, curvature.second, adjoints):
        scale = (adjoint * second)[:, None, :]
        blocks += tf.matmul(jacobian * scale, jacobian, transpose_b=True)
    return values, gradient, blocks


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
    if isinstance(op, (keras.layers.Add, *_AFFINE_PER_FEATURE)):
        return None
    if isinstance(op, keras.layers.Concatenate):
        return None if op.axis in (-1, 1) else f"layer {described} concatenates along axis {op.axis}"
    return f"layer {described} has no closed form here"


def _apply(op: Any, curvature: _Curvature, *args: Any, **kwargs: Any) -> _Jet:
    """One graph node on jets."""
    jets = [a for a in keras.tree.flatten(args) if isinstance(a, _Jet)]
    for jet in jets:
        if jet.value.shape.rank != 2:
            raise StructuralRefusal(f"layer {op.name!r} sees a value of per-example shape {jet.value.shape[1:]}")
    if isinstance(op, _IDENTITY):
        return jets[0]
    if isinstance(op, keras.layers.Dense):
        kernel = tf.cast(op.kernel, jets[0].value.dtype)
        z = tf.matmul(jets[0].value, kernel)
        if op.use_bias:
            z += tf.cast(op.bias, z.dtype)
        jacobian = None if jets[0].jacobian is None else _times_kernel(jets[0], kernel)
        return _activate(op.activation, _Jet(z, jacobian), curvature)
    if isinstance(op, keras.layers.Activation):
        return _activate(op.activation, jets[0], curvature)
    if isinstance(op, keras.layers.Add):
        return _Jet(tf.add_n([j.value for j in jets]), _sum([j.jacobian for j in jets]))
    if isinstance(op, keras.layers.Concatenate):
        return _concatenate(jets)
    if isinstance(op, _AFFINE_PER_FEATURE):
        return _affine(op, jets[0])
    raise StructuralRefusal(f"layer {op.name!r} ({type(op).__name__}) has no closed form here")


def _times_kernel(jet: _Jet, kernel: tf.Tensor) -> tf.Tensor:
    """J W for J (D, n) or (B, D, n) and W (n, m), as one 2-D matrix product (W itself when J = I)."""
    jacobian = jet.jacobian
    assert jacobian is not None
    if jet.is_identity:
        return kernel
    if jacobian.shape.rank == 2:
        return tf.matmul(jacobian, kernel)
    shape = tf.shape(jacobian)
    flat = tf.matmul(tf.reshape(jacobian, [-1, shape[2]]), kernel)
    return tf.reshape(flat, [shape[0], shape[1], kernel.shape[1]])


def _activate(activation: Callable[..., Any] | None, pre: _Jet, curvature: _Curvature) -> _Jet:
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
    curvature.jacobians.append(pre.jacobian)
    curvature.second.append(second)
    curvature.outputs.append(y)
    return _Jet(y, pre.jacobian * slope[:, None, :])


def _affine(layer: keras.layers.Layer, jet: _Jet) -> _Jet:
    """y = a ⊙ x + c per feature, with a = layer(1) - layer(0) read off the layer itself."""
    value = tf.cast(layer(jet.value, training=False), jet.value.dtype)
    if jet.jacobian is None:
        return _Jet(value, None)
    width = jet.value.shape[-1]
    probe = tf.constant([[1.0] * width, [0.0] * width], dtype=jet.value.dtype)
    at = tf.cast(layer(probe, training=False), jet.value.dtype)
    return _Jet(value, jet.jacobian * (at[0] - at[1]))


def _sum(jacobians: list[tf.Tensor | None]) -> tf.Tensor | None:
    present = [j for j in jacobians if j is not None]
    if not present:
        return None
    total = present[0]
    for jacobian in present[1:]:
        total = total + jacobian
    return total


def _concatenate(jets: list[_Jet]) -> _Jet:
    value = tf.concat([j.value for j in jets], axis=1)
    if all(j.jacobian is None for j in jets):
        return _Jet(value, None)
    batch = tf.shape(value)[0]
    dims = next(j.jacobian for j in jets if j.jacobian is not None).shape[-2]
    parts = []
    for jet in jets:
        width = jet.value.shape[-1]
        if jet.jacobian is None:
            parts.append(tf.zeros([batch, dims, width], value.dtype))
        elif jet.jacobian.shape.rank == 2:
            parts.append(tf.broadcast_to(jet.jacobian, [batch, dims, width]))
        else:
            parts.append(jet.jacobian)
    return _Jet(value, tf.concat(parts, axis=2))
