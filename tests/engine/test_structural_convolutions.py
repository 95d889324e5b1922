"""The structural (closed-form) strategy on convolutional models: Conv1D and
Conv2D with strides, padding, dilation and several channels, with the
flatten, reshape, padding and average pooling layers around them, against the
pfor reference (through the tuner's gate) and float64 finite differences; and
the models it must refuse (max pooling, causal padding, Dense on an image)."""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import pytest

import hessd_server as hs
from hessd.results import StrategyTiming
from support import engine_references as refs

RNG = np.random.default_rng(29)
L = keras.layers
BIAS = {"bias_initializer": "random_normal"}
"""Convolutions with nonzero biases, so that a bias left out of z shows."""


def _sequential(shape: tuple[int, ...], *layers: keras.layers.Layer, seed: int = 51) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        keras.utils.set_random_seed(seed)
        return keras.Sequential([keras.Input(shape), *[layer.__class__.from_config(layer.get_config()) for layer in layers]])

    return build


def _two_convolutions() -> keras.Model:
    """Functional: Conv2D(tanh) -> BatchNormalization -> Conv2D(softplus, dilated) added to a
    cropped branch, so the second convolution's Jacobian differs per example."""
    keras.utils.set_random_seed(52)
    image = keras.Input((7, 7, 2))
    first = L.Conv2D(3, 3, padding="same", activation="tanh", **BIAS)(image)
    normalized = L.BatchNormalization()(first)
    second = L.Conv2D(3, 3, dilation_rate=2, activation="softplus", **BIAS)(normalized)
    cropped = L.Cropping2D(2)(first)
    joined = L.Add()([second, cropped])
    return keras.Model(image, L.Dense(2, activation="tanh")(L.Flatten()(joined)))


MODELS: dict[str, tuple[Callable[[], keras.Model], int]] = {
    "conv2d_valid": (
        _sequential((5, 5, 2), L.Conv2D(3, 3, activation="softplus", **BIAS), L.Flatten(), L.Dense(1)),
        3,
    ),
    "conv2d_same_strided_average_pooled": (
        _sequential(
            (8, 8, 2),
            L.Conv2D(4, 3, strides=2, padding="same", activation="tanh", **BIAS),
            L.AveragePooling2D(2),
            L.Flatten(),
            L.Dense(3, activation="tanh"),
            L.Dense(1),
        ),
        2,
    ),
    "conv2d_dilated_global_average": (
        _sequential(
            (6, 6, 1),
            L.ZeroPadding2D(1),
            L.Conv2D(5, 3, dilation_rate=2, activation="sigmoid", **BIAS),
            L.GlobalAveragePooling2D(),
            L.Dense(1, activation="tanh"),
        ),
        4,
    ),
    "conv1d_strided_reshaped": (
        _sequential(
            (9, 3),
            L.Conv1D(4, 3, strides=2, padding="same", activation="tanh", **BIAS),
            L.Reshape((20,)),
            L.Dense(2, activation="softplus"),
        ),
        1,
    ),
    "two_convolutions": (_two_convolutions, 3),
}


def _timings(model: hs.Model) -> dict[str, StrategyTiming]:
    return {t.strategy: t for t in model.metadata().strategy_timings}


def _input(build: Callable[[], keras.Model], batch: int) -> np.ndarray:
    shape = tuple(build().inputs[0].shape[1:])
    return RNG.normal(size=(batch, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_structural_convolutions_pass_the_gate_and_match_pfor_and_finite_differences(name: str) -> None:
    build, batch = MODELS[name]
    x = _input(build, batch)
    model = hs.load_model(build(), config=hs.EngineConfig(max_batch_size=4))
    blocks = hs.hessian(model, x)
    timings = _timings(model)
    assert (timings["structural"].outcome, timings["pfor"].outcome) == ("chosen", "passed"), timings
    assert timings["structural"].source == "rule"
    pfor = hs.hessian(hs.load_model(build(), config=hs.EngineConfig(max_batch_size=4, strategy="pfor")), x)
    np.testing.assert_allclose(blocks, pfor, rtol=1e-5, atol=1e-6)
    assert not np.allclose(blocks, 0.0), "a zero Hessian would compare equal to anything small"
    reference = refs.finite_difference_hessians(refs.float64_value(build()), x)
    np.testing.assert_allclose(blocks, reference, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", ["conv2d_same_strided_average_pooled", "two_convolutions"])
def test_structural_convolutions_at_float64_match_finite_differences_closely(name: str) -> None:
    build, batch = MODELS[name]
    x = _input(build, batch)
    model = hs.load_model(build(), config=hs.EngineConfig(max_batch_size=4, strategy="structural"))
    blocks = hs.hessian(model, x, precision="float64")
    assert model.metadata().strategy == "structural" and blocks.dtype == np.float64
    np.testing.assert_allclose(blocks, refs.finite_difference_hessians(refs.float64_value(build()), x), rtol=1e-6, atol=1e-7)


def test_new_convolution_weights_are_used_without_a_new_compile() -> None:
    build, batch = MODELS["conv2d_valid"]
    keras_model = build()
    x = _input(build, batch)
    model = hs.load_model(keras_model, config=hs.EngineConfig(max_batch_size=4, strategy="structural"))
    before = hs.hessian(model, x)
    compiles = model.metadata().compile_count
    conv = keras_model.layers[0]
    conv.kernel.assign(conv.kernel.numpy() * -1.5)
    after = hs.hessian(model, x)
    assert model.metadata().compile_count == compiles
    np.testing.assert_allclose(after, refs.finite_difference_hessians(refs.float64_value(keras_model), x), rtol=2e-3, atol=2e-4)
    assert not np.allclose(after, before, rtol=1e-3)


REFUSED: dict[str, tuple[Callable[[], keras.Model], str]] = {
    "max_pooling": (
        _sequential((6, 6, 2), L.Conv2D(3, 3, activation="tanh"), L.MaxPooling2D(2), L.Flatten(), L.Dense(1)),
        "max pooling",
    ),
    "causal_conv1d": (
        _sequential((6, 2), L.Conv1D(3, 2, padding="causal", activation="tanh"), L.Flatten(), L.Dense(1)),
        "causal padding",
    ),
    "dense_on_an_image": (
        _sequential((4, 4, 2), L.Conv2D(3, 3, activation="tanh"), L.Dense(2, activation="tanh"), L.Flatten(), L.Dense(1)),
        "needs vectors there",
    ),
}


@pytest.mark.parametrize("name", REFUSED)
def test_structural_path_refuses_what_it_does_not_cover_and_the_reference_is_used(name: str) -> None:
    build, reason = REFUSED[name]
    x = _input(build, 2)
    model = hs.load_model(build(), config=hs.EngineConfig(max_batch_size=2, strategy="structural"))
    blocks = hs.hessian(model, x)
    refused = _timings(model)["structural"]
    assert refused.outcome == "refused" and reason in refused.detail, refused
    assert model.metadata().strategy == "pfor"
    np.testing.assert_allclose(blocks, refs.finite_difference_hessians(refs.float64_value(build()), x), rtol=2e-3, atol=2e-4)
