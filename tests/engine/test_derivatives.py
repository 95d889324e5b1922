"""Engine results against independent references: the seed's cases, closed
forms, float64 finite differences and tf.hessians."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import hessd_server as hs
from hessd_server.engine.model_loading import as_model
from support import engine_references as refs

RNG = np.random.default_rng(7)


def test_seed_linear_model_full_hessian_is_zeros() -> None:
    x = RNG.uniform(1.5, 2.5, (3, 10)).astype(np.float32)
    full = hs.hessian(refs.seed_linear_model(), x, full=True)
    assert full.shape == (3, 10, 3, 10) and full.dtype == np.float32
    assert not full.any()


def test_seed_linear_model_per_example_hessian_is_zeros() -> None:
    x = RNG.uniform(1.5, 2.5, (3, 10)).astype(np.float32)
    blocks = hs.hessian(refs.seed_linear_model(), x)
    assert blocks.shape == (3, 10, 10) and blocks.dtype == np.float32
    assert not blocks.any()


def test_relu_network_hessian_is_zeros() -> None:
    blocks = hs.hessian(refs.relu_mlp(5), RNG.normal(size=(4, 5)).astype(np.float32))
    assert blocks.shape == (4, 5, 5) and not blocks.any()


def test_seed_sigmoid_model_full_equals_tf_hessians() -> None:
    model = refs.seed_sigmoid_model()
    x = RNG.uniform(1.5, 2.5, (3, 10)).astype(np.float32)
    reference = refs.tf_hessians(model, x)
    full = hs.hessian(model, x, full=True)
    assert full.shape == reference.shape == (3, 10, 3, 10)
    np.testing.assert_allclose(full, reference, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(hs.hessian(model, x), refs.diagonal_blocks(reference, 3), rtol=1e-5, atol=1e-8)


def test_per_example_blocks_are_symmetric() -> None:
    blocks = hs.hessian(refs.tanh_mlp(6, outputs=3), RNG.normal(size=(5, 6)).astype(np.float32))
    np.testing.assert_allclose(blocks, np.swapaxes(blocks, 1, 2), rtol=1e-5, atol=1e-7)


def _matrix_input_model() -> keras.Model:
    """(3, 2) inputs -> Flatten -> Dense(5, tanh) -> Dense(1): a block mixes both event axes."""
    keras.utils.set_random_seed(15)
    return keras.Sequential(
        [keras.Input((3, 2)), keras.layers.Flatten(), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(1)]
    )


@pytest.mark.parametrize("strategy", ["pfor", "tiled"])
def test_each_strategy_matches_tf_hessians_entry_by_entry(strategy: str) -> None:
    """Symmetry alone cannot see a block transposed, its event axes swapped or examples exchanged."""
    model = hs.load_model(_matrix_input_model(), config=hs.EngineConfig(strategy=strategy))
    x = RNG.normal(size=(3, 3, 2)).astype(np.float32)
    reference = refs.tf_hessians(_matrix_input_model(), x)
    blocks = hs.hessian(model, x)
    assert blocks.shape == (3, 3, 2, 3, 2)
    np.testing.assert_allclose(blocks, refs.diagonal_blocks(reference, 3), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(hs.hessian(model, x, full=True), reference, rtol=1e-4, atol=1e-6)
    assert model.metadata().strategy == strategy


def test_gradient_matches_a_closed_form_and_finite_differences() -> None:
    a = RNG.normal(size=(4, 3)).astype(np.float32)
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    expected = 2 * x.astype(np.float64) @ a.astype(np.float64) @ a.T.astype(np.float64)
    np.testing.assert_allclose(hs.gradient(refs.quadratic_model(a), x), expected, rtol=1e-4, atol=1e-5)
    mlp = refs.tanh_mlp(5, outputs=2, seed=4)
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    reference = refs.finite_difference_gradient(refs.float64_value(mlp), x)
    np.testing.assert_allclose(hs.gradient(mlp, x), reference, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(hs.gradient(mlp, x, precision="float64"), reference, rtol=1e-7, atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(
    a=arrays(np.float32, (4, 3), elements=st.floats(-2, 2, width=32)),
    x=arrays(np.float32, (2, 4), elements=st.floats(-3, 3, width=32)),
)
def test_quadratic_model_hessian_is_two_a_a_transposed(a: np.ndarray, x: np.ndarray) -> None:
    model = _QUADRATIC
    model.set_weights([a])
    expected = np.broadcast_to(2 * a.astype(np.float64) @ a.T.astype(np.float64), (2, 4, 4))
    np.testing.assert_allclose(hs.hessian(model, x), expected, rtol=1e-5, atol=1e-5)


_QUADRATIC = refs.quadratic_model(np.ones((4, 3)))


def test_output_weights_give_the_lagrangian_hessian() -> None:
    model = refs.tanh_mlp(4, outputs=3)
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    weights = np.array([0.5, -2.0, 3.0], np.float32)
    per_output = [
        hs.hessian(model, x, output_weights=np.eye(3, dtype=np.float32)[k]) for k in range(3)
    ]
    expected = sum(w * h for w, h in zip(weights, per_output))
    np.testing.assert_allclose(hs.hessian(model, x, output_weights=weights), expected, rtol=1e-4, atol=1e-6)
    per_example = np.stack([weights, -weights])
    rows = hs.hessian(model, x, output_weights=per_example)
    np.testing.assert_allclose(rows[1], -expected[1], rtol=1e-4, atol=1e-6)


def test_matches_float64_finite_differences() -> None:
    model = refs.seed_sigmoid_model()
    x = RNG.uniform(-1, 1, (2, 10)).astype(np.float32)
    reference = refs.finite_difference_hessians(refs.float64_value(model), x)
    np.testing.assert_allclose(hs.hessian(model, x), reference, rtol=1e-3, atol=1e-5)


def test_float64_precision_matches_finite_differences_closely() -> None:
    model = refs.tanh_mlp(5, outputs=2)
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    result = hs.evaluate(model, x, precision="float64")
    assert {a.dtype for a in result} == {np.dtype(np.float64)}
    reference = refs.finite_difference_hessians(refs.float64_value(model), x)
    np.testing.assert_allclose(result.hessian, reference, rtol=1e-6, atol=1e-8)
    assert np.abs(result.hessian - reference).max() < np.abs(hs.hessian(model, x) - reference).max()


def test_float64_precision_of_a_functional_model_using_keras_ops() -> None:
    """keras.ops nodes have no dtype to set: the float64 copy keeps them and
    they compute in float64. The reference is the same model written in NumPy."""
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(5, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.ops.sin(hidden) * 2.0 + hidden))
    w1, b1, w2, b2 = (w.astype(np.float64) for w in model.get_weights())

    def value(points: np.ndarray) -> np.ndarray:
        h = np.tanh(points @ w1 + b1)
        return ((np.sin(h) * 2.0 + h) @ w2 + b2)[:, 0]

    x = RNG.normal(size=(3, 4)).astype(np.float32)
    blocks = hs.hessian(model, x, precision="float64")
    assert blocks.dtype == np.float64
    np.testing.assert_allclose(blocks, refs.finite_difference_hessians(value, x), rtol=1e-6, atol=1e-8)


def test_conv2d_on_images_matches_tf_hessians() -> None:
    model = refs.conv_model()
    x = RNG.normal(size=(2, 5, 5, 2)).astype(np.float32)
    blocks = hs.hessian(model, x)
    assert blocks.shape == (2, 5, 5, 2, 5, 5, 2)
    np.testing.assert_allclose(blocks, refs.diagonal_blocks(refs.tf_hessians(model, x), 2), rtol=1e-4, atol=1e-6)


def test_a_short_lstm_is_unrolled_so_pfor_applies_and_matches_finite_differences() -> None:
    keras_model = refs.lstm_model()
    model = hs.load_model(keras_model)
    x = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    blocks = hs.hessian(model, x)
    assert keras_model.layers[0].unroll is True
    outcomes = {t.strategy: t.outcome for t in model.metadata().strategy_timings}
    assert outcomes == {"pfor": "chosen", "tiled": "skipped", "forward_over_reverse": "skipped", "structural": "refused"}
    assert blocks.shape == (2, 4, 3, 4, 3)
    reference = refs.finite_difference_hessians(refs.float64_value(refs.lstm_model()), x)
    np.testing.assert_allclose(blocks, reference, rtol=1e-3, atol=1e-4)


def test_lstm_over_sequences_of_unknown_length_uses_a_strategy_without_pfor_and_matches_finite_differences() -> None:
    keras_model = refs.lstm_model(steps=None)
    model = hs.load_model(keras_model)
    x = RNG.normal(size=(2, 4, 3)).astype(np.float32)
    blocks = hs.hessian(model, x)
    assert keras_model.layers[0].unroll is False
    assert model.metadata().strategy in ("tiled", "forward_over_reverse")
    outcomes = {t.strategy: t.outcome for t in model.metadata().strategy_timings}
    assert outcomes == {"pfor": "failed", "tiled": "chosen", "forward_over_reverse": "skipped", "structural": "refused"}
    assert blocks.shape == (2, 4, 3, 4, 3)
    reference = refs.finite_difference_hessians(refs.float64_value(refs.lstm_model()), x)
    np.testing.assert_allclose(blocks, reference, rtol=1e-3, atol=1e-4)


def test_batchnorm_and_dropout_run_in_inference_mode() -> None:
    keras_model = refs.batchnorm_dropout_model()
    x = RNG.normal(size=(4, 6)).astype(np.float32)
    first, second = hs.hessian(keras_model, x), hs.hessian(keras_model, x)
    np.testing.assert_array_equal(first, second)
    reference = refs.finite_difference_hessians(refs.float64_value(keras_model), x)
    np.testing.assert_allclose(first, reference, rtol=1e-3, atol=1e-5)
    assert hs.load_model(keras_model).metadata().strategy is None
    assert as_model(keras_model).batch_independent is True


def test_multi_input_model_differentiates_wrt_one_input() -> None:
    model = refs.two_input_model()
    x = {"state": RNG.normal(size=(3, 4)).astype(np.float32), "control": RNG.normal(size=(3, 2)).astype(np.float32)}
    for wrt, dim in (("state", 4), ("control", 2)):
        blocks = hs.hessian(model, x, wrt=wrt)
        assert blocks.shape == (3, dim, dim)
        reference = refs.diagonal_blocks(refs.tf_hessians_wrt(model, x, wrt), 3)
        np.testing.assert_allclose(blocks, reference, rtol=1e-5, atol=1e-7)


def test_gradient_and_hvp_agree_with_the_hessian() -> None:
    model = refs.tanh_mlp(6, outputs=2)
    x = RNG.normal(size=(5, 6)).astype(np.float32)
    v = RNG.normal(size=(5, 6)).astype(np.float32)
    result = hs.evaluate(model, x)
    np.testing.assert_allclose(hs.hvp(model, x, v), np.einsum("bij,bj->bi", result.hessian, v), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(hs.gradient(model, x), result.gradient, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.value, np.asarray(model(x)).sum(axis=1), rtol=1e-5, atol=1e-6)


def test_nan_inputs_propagate_to_their_own_example() -> None:
    x = RNG.normal(size=(3, 10)).astype(np.float32)
    x[1, 2] = np.nan
    blocks = hs.hessian(refs.seed_sigmoid_model(), x)
    assert np.isnan(blocks[1]).any()
    assert np.isfinite(blocks[[0, 2]]).all()


def test_multiple_outputs_are_flattened_in_order() -> None:
    keras_model = refs.two_output_model()
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    weights = np.array([1.0, -1.0, 0.5, 2.0, 0.0], np.float32)
    reference = refs.finite_difference_hessians(refs.float64_value(keras_model, weights), x)
    np.testing.assert_allclose(hs.hessian(keras_model, x, output_weights=weights), reference, rtol=1e-3, atol=1e-5)


def test_inputs_of_unknown_length_compile_per_length() -> None:
    model = hs.load_model(refs.variable_length_model())
    assert model.inputs[0].shape == (None, 2)
    for length in (3, 5):
        x = RNG.normal(size=(2, length, 2)).astype(np.float32)
        blocks = hs.hessian(model, x)
        assert blocks.shape == (2, length, 2, length, 2)
        reference = refs.finite_difference_hessians(refs.float64_value(refs.variable_length_model()), x)
        np.testing.assert_allclose(blocks, reference, rtol=1e-3, atol=1e-5)


def test_half_precision_inputs_are_computed_in_float32() -> None:
    """One model for both calls: two models may autotune to different strategies,
    which agree only to float32 rounding."""
    model = hs.load_model(refs.seed_sigmoid_model())
    x = RNG.normal(size=(2, 10)).astype(np.float16)
    blocks = hs.hessian(model, x)
    assert blocks.dtype == np.float32
    np.testing.assert_array_equal(blocks, hs.hessian(model, x.astype(np.float32)))
