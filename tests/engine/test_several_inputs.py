"""Differentiating with respect to several inputs at once (``wrt=[...]``): the
Hessian over their concatenation, cross blocks included, against nested
GradientTapes taken input by input on a float32 and a float64 build of the
same model; the named-block helpers; and what a bad ``wrt`` meets."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import pytest
import tensorflow as tf

import hessd
import hessd_server as hs
from hessd import errors
from support.wire_fixtures import multi_input_model, pricing_model, rng_array

TOLERANCES = {"float32": {"rtol": 2e-4, "atol": 2e-5}, "float64": {"rtol": 1e-9, "atol": 1e-12}}


def pricing_inputs(batch: int = 3) -> dict[str, np.ndarray]:
    return {
        "spot": rng_array((batch, 2), seed=1),
        "vol": rng_array((batch, 2), seed=2),
        "rate": rng_array((batch, 1), seed=3),
    }


def built_at(precision: str) -> keras.Model:
    """The pricing model computing in ``precision``, with the float32 build's weights."""
    reference = pricing_model()
    if precision == "float32":
        return reference
    model = pricing_model("float64")
    model.set_weights([w.astype(np.float64) for w in reference.get_weights()])
    return model


def nested_tape_blocks(
    model: keras.Model, x: dict[str, np.ndarray], wrt: Sequence[str], weights: np.ndarray, precision: str
) -> tuple[dict[str, np.ndarray], dict[tuple[str, str], np.ndarray]]:
    """Gradient blocks {a: (B, *S_a)} and full Hessian blocks {(a, b): (B, *S_a, B, *S_b)}
    of f = sum(w * model(x)), one input at a time, by a persistent outer tape's
    Jacobian of an inner tape's gradient (no concatenation anywhere)."""
    tensors = {name: tf.constant(array.astype(precision)) for name, array in x.items()}
    with tf.GradientTape(persistent=True) as outer:
        for name in wrt:
            outer.watch(tensors[name])
        with tf.GradientTape() as inner:
            for name in wrt:
                inner.watch(tensors[name])
            total = tf.reduce_sum(model(tensors) * tf.constant(weights.astype(precision)))
        gradients = dict(zip(wrt, inner.gradient(total, [tensors[name] for name in wrt])))
    blocks = {(a, b): outer.jacobian(gradients[a], tensors[b]).numpy() for a in wrt for b in wrt}
    return {name: g.numpy() for name, g in gradients.items()}, blocks


def per_example(full: np.ndarray, rank_a: int) -> np.ndarray:
    """(B, *S_a, B, *S_b) -> (B, *S_a, *S_b), the blocks of each example with itself."""
    moved = np.moveaxis(full, 1 + rank_a, 1)
    return np.stack([moved[i, i] for i in range(full.shape[0])])


@pytest.fixture(scope="module")
def model() -> hs.Model:
    return hs.load_model(pricing_model())


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("wrt", [["spot", "vol"], ["vol", "rate", "spot"]])
def test_hessian_blocks_match_nested_tapes(model: hs.Model, precision: str, wrt: list[str]) -> None:
    x = pricing_inputs()
    weights = rng_array((3, 2), seed=4)
    gradients, expected = nested_tape_blocks(built_at(precision), x, wrt, weights, precision)
    shapes = {name: x[name].shape[1:] for name in wrt}
    size = sum(int(np.prod(s)) for s in shapes.values())

    hessian = hs.hessian(model, x, wrt=wrt, output_weights=weights, precision=precision)
    assert hessian.shape == (3, size, size) and hessian.dtype == precision
    for (a, b), block in hs.split_hessian(hessian, shapes).items():
        np.testing.assert_allclose(block, per_example(expected[a, b], len(shapes[a])), **TOLERANCES[precision])
    assert np.abs(hs.split_hessian(hessian, shapes)["spot", "vol"]).max() > 1e-3

    full = hs.hessian(model, x, wrt=wrt, output_weights=weights, precision=precision, full=True)
    assert full.shape == (3, size, 3, size)
    for (a, b), block in hs.split_hessian(full, shapes, full=True).items():
        np.testing.assert_allclose(block, expected[a, b], **TOLERANCES[precision])

    gradient = hs.gradient(model, x, wrt=wrt, output_weights=weights, precision=precision)
    assert gradient.shape == (3, size)
    for name, block in hs.split_vector(gradient, shapes).items():
        np.testing.assert_allclose(block, gradients[name], **TOLERANCES[precision])


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_hvp_and_evaluate_agree_with_the_hessian(model: hs.Model, precision: str) -> None:
    x = pricing_inputs()
    wrt = ["rate", "spot"]
    shapes = {name: x[name].shape[1:] for name in wrt}
    hessian = hs.hessian(model, x, wrt=wrt, precision=precision)
    blocks = {"rate": rng_array((3, 1), seed=5), "spot": rng_array((3, 2), seed=6)}
    v = hs.join_vector(blocks, shapes)
    expected = np.einsum("bij,bj->bi", hessian, v)
    np.testing.assert_allclose(hs.hvp(model, x, v, wrt=wrt, precision=precision), expected, **TOLERANCES[precision])
    np.testing.assert_array_equal(
        hs.hvp(model, x, blocks, wrt=wrt, precision=precision), hs.hvp(model, x, v, wrt=wrt, precision=precision)
    )
    evaluation = hs.evaluate(model, x, wrt=wrt, precision=precision)
    np.testing.assert_allclose(evaluation.hessian, hessian, **TOLERANCES[precision])
    np.testing.assert_allclose(
        evaluation.gradient, hs.gradient(model, x, wrt=wrt, precision=precision), **TOLERANCES[precision]
    )


def test_shaped_inputs_come_back_in_their_shapes() -> None:
    keras_model = multi_input_model()
    model = hs.load_model(keras_model)
    x = {"a": rng_array((2, 3), seed=7), "b": rng_array((2, 2, 2), seed=8), "ids": np.array([[0, 1], [4, 2]], np.int32)}
    weights = np.ones((2, 2), np.float32)
    _, expected = nested_tape_blocks(keras_model, x, ["b", "a"], weights, "float32")
    blocks = hs.split_hessian(hs.hessian(model, x, wrt=["b", "a"]), {"b": (2, 2), "a": 3})
    assert blocks["b", "a"].shape == (2, 2, 2, 3) and blocks["a", "b"].shape == (2, 3, 2, 2)
    for pair, block in blocks.items():
        np.testing.assert_allclose(block, per_example(expected[pair], len(x[pair[0]].shape) - 1), rtol=2e-4, atol=2e-5)


def test_one_name_keeps_the_single_input_shapes(model: hs.Model) -> None:
    x = pricing_inputs()
    alone = hs.hessian(model, x, wrt="spot")
    assert alone.shape == (3, 2, 2)
    np.testing.assert_array_equal(hs.hessian(model, x, wrt=["spot"]), alone)
    np.testing.assert_array_equal(hs.gradient(model, x, wrt=("spot",)), hs.gradient(model, x, wrt="spot"))
    np.testing.assert_array_equal(hs.split_hessian(alone, {"spot": (2,)})["spot", "spot"], alone)


def test_curvature_summarises_the_concatenated_blocks(model: hs.Model) -> None:
    x = pricing_inputs()
    wrt = ["spot", "vol"]
    hessian = hs.hessian(model, x, wrt=wrt).astype(np.float64)
    diagonal = hs.hessian_diagonal(model, x, wrt=wrt, method="exact")
    np.testing.assert_allclose(diagonal.diagonal, np.diagonal(hessian, axis1=1, axis2=2), rtol=1e-5, atol=1e-6)
    trace = hs.hessian_trace(model, x, wrt=wrt, method="exact")
    np.testing.assert_allclose(trace.trace, np.trace(hessian, axis1=1, axis2=2), rtol=1e-5, atol=1e-6)
    eigen = hs.hessian_eigen(model, x, wrt=wrt, k=4, method="exact")
    np.testing.assert_allclose(
        np.sort(eigen.eigenvalues, axis=1), np.linalg.eigvalsh(hessian), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(errors.InvalidArgumentError) as raised:
        hs.hessian_eigen(model, x, wrt=wrt, k=5)
    assert "inputs ['spot', 'vol'] (concatenated)" in raised.value.message


def test_a_bucket_tuned_for_one_input_still_serves_several() -> None:
    """A bucket's strategy chosen for one input (here the closed form) must not be
    reused where it does not apply: several inputs, which the closed form refuses."""
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    hidden = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([a, b]))
    closed_form = hs.EngineConfig(strategy="structural")
    model = hs.load_model(keras.Model([a, b], keras.layers.Dense(1)(hidden)), config=closed_form)
    x = {"a": rng_array((2, 3), seed=9), "b": rng_array((2, 2), seed=10)}
    alone = hs.hessian(model, x, wrt="a")
    assert model.metadata().strategy == "structural"
    together = hs.hessian(model, x, wrt=["a", "b"])
    np.testing.assert_allclose(together[:, :3, :3], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("wrt", "error_type", "field", "words"),
    [
        (["spot", "spot"], errors.InvalidArgumentError, "wrt", "more than once"),
        (["spot", "volatility"], errors.UnknownInputError, "wrt", "choose one of ['spot', 'vol', 'rate']"),
        (["spot", 3], errors.InvalidArgumentError, "wrt", "input names (strings)"),
    ],
    ids=["duplicate", "unknown", "not-a-string"],
)
def test_a_bad_wrt_is_refused_before_computing(
    model: hs.Model, wrt: list[object], error_type: type[errors.HessdError], field: str, words: str
) -> None:
    compiled = model.metadata().compile_count
    with pytest.raises(error_type) as raised:
        hs.hessian(model, pricing_inputs(), wrt=wrt)
    assert raised.value.field == field and words in raised.value.message
    assert model.metadata().compile_count == compiled


def test_an_integer_input_cannot_be_differentiated() -> None:
    model = hs.load_model(multi_input_model())
    x = {"a": rng_array((2, 3)), "b": rng_array((2, 2, 2)), "ids": np.array([[0, 1], [4, 2]], np.int32)}
    for wrt in (["a", "ids"], "ids"):
        with pytest.raises(errors.DtypeError) as raised:
            hs.gradient(model, x, wrt=wrt)
        assert raised.value.field == "wrt" and "'ids' holds int32" in raised.value.message


def test_v_must_match_the_concatenation(model: hs.Model) -> None:
    x = pricing_inputs()
    with pytest.raises(errors.ShapeError) as raised:
        hs.hvp(model, x, rng_array((3, 2)), wrt=["spot", "vol"])
    assert raised.value.field == "v" and "(3, 4)" in raised.value.message
    with pytest.raises(errors.ShapeError) as raised:
        hs.hvp(model, x, {"spot": rng_array((3, 2))}, wrt=["spot", "vol"])
    assert raised.value.field == "v" and "one block per differentiated input" in raised.value.message


def test_the_block_helpers_refuse_a_result_of_another_size() -> None:
    with pytest.raises(errors.ShapeError):
        hessd.split_hessian(np.zeros((2, 4, 4)), {"a": 2, "b": 3})
    with pytest.raises(errors.ShapeError):
        hessd.split_hessian(np.zeros((2, 5, 2, 4)), {"a": 2, "b": 3}, full=True)
    with pytest.raises(errors.ShapeError):
        hessd.split_vector(np.zeros((2, 4)), {"a": (2, 2), "b": 1})
    vector = np.arange(10.0).reshape(2, 5)
    parts = hessd.split_vector(vector, {"a": (2, 2), "b": 1})
    np.testing.assert_array_equal(hessd.join_vector(parts, {"a": (2, 2), "b": 1}), vector)
