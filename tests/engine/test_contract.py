"""The engine's contract beyond the numbers: buckets and compiles, strategy and
XLA fallbacks, batch independence, loading, and every bad input."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import hessd_server as hs
from hessd_server.engine.model_loading import as_model
from hessd import errors
from support import engine_references as refs

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def mlp() -> hs.Model:
    return hs.load_model(refs.tanh_mlp(6, outputs=2), config=hs.EngineConfig(max_batch_size=16))


def test_padding_leaves_results_unchanged_for_batch_sizes_1_to_9(mlp: hs.Model) -> None:
    x = RNG.normal(size=(9, 6)).astype(np.float32)
    singles = np.concatenate([hs.hessian(mlp, x[b : b + 1]) for b in range(9)])
    for batch in range(1, 10):
        np.testing.assert_allclose(hs.hessian(mlp, x[:batch]), singles[:batch], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(hs.gradient(mlp, x[:batch]), hs.gradient(mlp, x)[:batch], rtol=1e-5, atol=1e-7)
    full = hs.hessian(mlp, x[:3], full=True)
    assert full.shape == (3, 6, 3, 6)
    np.testing.assert_allclose(refs.diagonal_blocks(full, 3), singles[:3], rtol=1e-5, atol=1e-7)


def test_compile_count_stays_flat_within_buckets(mlp: hs.Model) -> None:
    x = RNG.normal(size=(17, 6)).astype(np.float32)
    for batch in (9, 16):
        hs.evaluate(mlp, x[:batch])
        hs.gradient(mlp, x[:batch])
        hs.hvp(mlp, x[:batch], x[:batch])
    compiled = mlp.metadata().compile_count
    for batch in (10, 11, 12, 13, 14, 15, 16, 9):
        hs.hessian(mlp, x[:batch])
        hs.evaluate(mlp, x[:batch])
        hs.gradient(mlp, x[:batch])
        hs.hvp(mlp, x[:batch], x[:batch])
    assert mlp.metadata().compile_count == compiled


def test_batches_above_the_largest_bucket_run_as_slices_without_compiling(mlp: hs.Model) -> None:
    x = RNG.normal(size=(40, 6)).astype(np.float32)
    v = RNG.normal(size=(40, 6)).astype(np.float32)
    parts = [slice(0, 16), slice(16, 32), slice(32, 40)]
    expected = {
        "hessian": np.concatenate([hs.hessian(mlp, x[p]) for p in parts]),
        "gradient": np.concatenate([hs.gradient(mlp, x[p]) for p in parts]),
        "hvp": np.concatenate([hs.hvp(mlp, x[p], v[p]) for p in parts]),
        "value": np.concatenate([hs.evaluate(mlp, x[p]).value for p in parts]),
    }
    hs.hessian(mlp, x[:4], full=True)  # a full Hessian runs unpadded: the slices of 20 are 16 and 4
    hs.hessian(mlp, x[:16], full=True)
    compiled = mlp.metadata().compile_count
    np.testing.assert_array_equal(hs.hessian(mlp, x), expected["hessian"])
    np.testing.assert_array_equal(hs.gradient(mlp, x), expected["gradient"])
    np.testing.assert_array_equal(hs.hvp(mlp, x, v), expected["hvp"])
    evaluation = hs.evaluate(mlp, x)
    np.testing.assert_array_equal(evaluation.value, expected["value"])
    np.testing.assert_array_equal(evaluation.hessian, expected["hessian"])
    full = hs.hessian(mlp, x[:20], full=True)
    assert full.shape == (20, 6, 20, 6)
    np.testing.assert_allclose(refs.diagonal_blocks(full, 20), expected["hessian"][:20], rtol=1e-5, atol=1e-7)
    off_diagonal = full.copy()
    for b in range(20):
        off_diagonal[b, :, b, :] = 0
    assert not off_diagonal.any()
    assert mlp.metadata().compile_count == compiled


def test_buckets_are_powers_of_two_up_to_the_largest() -> None:
    config = hs.EngineConfig(max_batch_size=8)
    assert config.buckets == (1, 2, 4, 8)
    assert [config.bucket_for(b) for b in (1, 2, 3, 5, 8, 9, 17)] == [1, 2, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError, match="power of two"):
        hs.EngineConfig(max_batch_size=12)


def test_compiled_functions_are_bounded_least_recently_used_first() -> None:
    inputs = keras.Input((None,))
    model = hs.load_model(
        keras.Model(inputs, keras.layers.Lambda(lambda t: keras.ops.sum(keras.ops.sin(t), axis=-1))(inputs)),
        config=hs.EngineConfig(max_compiled_functions=2),
    )
    for length in (2, 3, 4, 2):
        x = RNG.normal(size=(1, length)).astype(np.float32)
        np.testing.assert_allclose(hs.gradient(model, x), np.cos(x), rtol=1e-5)
    assert len(model.functions) == 2
    assert model.functions.evictions == 2
    assert model.metadata().compile_count == 4
    hs.gradient(model, RNG.normal(size=(1, 2)).astype(np.float32))
    assert model.metadata().compile_count == 4
    with pytest.raises(ValueError, match="max_compiled_functions"):
        hs.EngineConfig(max_compiled_functions=0)


def test_strategy_is_chosen_once_per_bucket_and_recorded(mlp: hs.Model) -> None:
    hs.hessian(mlp, RNG.normal(size=(2, 6)).astype(np.float32))
    metadata = mlp.metadata()
    chosen = [t for t in metadata.strategy_timings if t.outcome == "chosen"]
    assert len([t for t in chosen if t.batch == 2]) == 1
    assert metadata.strategy == chosen[-1].strategy
    assert metadata.batch_independent is True
    assert metadata.xla_fallbacks == ()


class NumpyTag(keras.layers.Layer):
    """sum(sin(x)) plus a zero computed by a numpy op, which XLA cannot compile."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        zero = tf.numpy_function(lambda a: np.zeros_like(a[:, :1]), [x], x.dtype, stateful=False)
        return tf.reduce_sum(tf.sin(x), axis=-1, keepdims=True) + tf.stop_gradient(tf.ensure_shape(zero, (None, 1)))


def test_xla_failure_falls_back_to_graph_mode_and_is_recorded() -> None:
    inputs = keras.Input((3,))
    model = hs.load_model(keras.Model(inputs, NumpyTag()(inputs)))
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    blocks = hs.hessian(model, x)
    np.testing.assert_allclose(blocks, np.stack([np.diag(-np.sin(row)) for row in x]), rtol=1e-5, atol=1e-7)
    fallbacks = model.metadata().xla_fallbacks
    assert len(fallbacks) == 1 and "hessian/float32: graph mode" in fallbacks[0]
    assert model.metadata().compile_count == 1, "failed XLA candidates were counted as compiles"
    hs.hessian(model, RNG.normal(size=(4, 3)).astype(np.float32))
    assert len(model.metadata().xla_fallbacks) == 1
    assert model.metadata().compile_count == 2


def test_batch_mixing_model_refuses_per_example_blocks_but_computes_full() -> None:
    keras_model = refs.batch_mixing_model()
    model = hs.load_model(keras_model)
    x = RNG.normal(size=(3, 3)).astype(np.float32)
    with pytest.raises(errors.BatchDependenceError, match="full=True"):
        hs.hessian(model, x)
    assert model.metadata().batch_independent is False
    np.testing.assert_allclose(hs.hessian(model, x, full=True), refs.tf_hessians(keras_model, x), rtol=1e-5, atol=1e-7)
    full = hs.hessian(model, x, full=True).reshape(9, 9)
    v = RNG.normal(size=(3, 3)).astype(np.float32)
    np.testing.assert_allclose(hs.hvp(model, x, v).reshape(9), full @ v.reshape(9), rtol=1e-4, atol=1e-6)


def test_load_model_from_keras_file_saved_model_and_factory(tmp_path) -> None:
    keras_model = refs.seed_sigmoid_model()
    x = RNG.normal(size=(2, 10)).astype(np.float32)
    expected = hs.hessian(keras_model, x)
    keras_model.save(tmp_path / "seed.keras")
    keras_model.export(str(tmp_path / "exported"), verbose=False)
    from_file = hs.load_model(tmp_path / "seed.keras")
    from_saved_model = hs.load_model(tmp_path / "exported", name="exported")
    assert from_file.name == "seed" and from_saved_model.name == "exported"
    np.testing.assert_allclose(hs.hessian(from_file, x), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(hs.hessian(from_saved_model, x), expected, rtol=1e-5, atol=1e-8)
    with pytest.raises(errors.PrecisionError, match="float64"):
        hs.hessian(from_saved_model, x, precision="float64")
    demo = hs.load_model(hs.DEMO_MODEL_SOURCE)
    assert demo.name == "demo" and demo.inputs == (hs.TensorInfo("x", (10,), "float32"),)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("no/such/model.keras", "neither an existing"),
        ("hessd_server.engine.demo_model:no_such_factory", "failed"),
        ("support.engine_references:seed_linear_model_missing", "failed"),
    ],
)
def test_load_model_errors_say_what_to_fix(source: str, match: str) -> None:
    with pytest.raises(errors.ModelLoadError, match=match):
        hs.load_model(source)


def test_factory_must_return_a_keras_model() -> None:
    with pytest.raises(errors.ModelLoadError, match="not a keras.Model"):
        hs.load_model("builtins:object")


def test_multi_input_model_needs_wrt_and_all_inputs() -> None:
    model = refs.two_input_model()
    x = {"state": np.zeros((2, 4), np.float32), "control": np.zeros((2, 2), np.float32)}
    with pytest.raises(errors.UnknownInputError, match="wrt="):
        hs.hessian(model, x)
    with pytest.raises(errors.UnknownInputError, match="choose one of"):
        hs.hessian(model, x, wrt="speed")
    with pytest.raises(errors.ShapeError, match="missing"):
        hs.hessian(model, {"state": x["state"]}, wrt="state")
    with pytest.raises(errors.ShapeError, match="same batch size"):
        hs.hessian(model, {**x, "control": np.zeros((3, 2), np.float32)}, wrt="state")
    with pytest.raises(errors.ShapeError, match="dict name -> array"):
        hs.hessian(model, x["state"], wrt="state")


@pytest.mark.parametrize(
    ("x", "kwargs", "error", "match"),
    [
        (np.zeros((10,), np.float32), {}, errors.ShapeError, "rank 2"),
        (np.zeros((3, 9), np.float32), {}, errors.ShapeError, r"shape \('B', 10\)"),
        (np.zeros((0, 10), np.float32), {}, errors.ShapeError, "B >= 1"),
        (np.zeros((3, 10), np.int32), {}, errors.DtypeError, "astype"),
        (np.zeros((3, 10), np.float32), {"wrt": "y"}, errors.UnknownInputError, "choose one of"),
        (np.zeros((3, 10), np.float32), {"output_weights": np.ones(2)}, errors.OutputWeightsError, r"\(K,\) = \(1,\)"),
        (np.zeros((3, 10), np.float32), {"output_weights": np.ones((2, 1))}, errors.OutputWeightsError, r"\(3, 1\)"),
        (np.zeros((3, 10), np.float32), {"precision": "float16"}, errors.PrecisionError, "precision must be"),
    ],
)
def test_bad_inputs_raise_errors_that_say_what_to_fix(x, kwargs, error, match) -> None:
    model = hs.load_model(hs.DEMO_MODEL_SOURCE)
    with pytest.raises(error, match=match) as caught:
        hs.hessian(model, x, **kwargs)
    assert isinstance(caught.value, errors.InvalidArgumentError)
    assert model.metadata().compile_count == 0


def test_hvp_direction_must_match_x() -> None:
    model = hs.load_model(hs.DEMO_MODEL_SOURCE)
    x = np.zeros((3, 10), np.float32)
    with pytest.raises(errors.ShapeError, match="v must have the shape"):
        hs.hvp(model, x, np.zeros((3, 9), np.float32))
    with pytest.raises(errors.DtypeError, match="v must be floating"):
        hs.hvp(model, x, np.zeros((3, 10), np.int64))


def test_oversized_result_is_refused_before_computing() -> None:
    inputs = keras.Input((1024,))
    model = hs.load_model(keras.Model(inputs, keras.layers.Dense(1, activation="tanh")(inputs)))
    x = np.zeros((256, 1024), np.float32)
    with pytest.raises(errors.ResultTooLargeError, match="274,877,906,944 bytes"):
        hs.hessian(model, x, full=True)
    assert model.metadata().compile_count == 0
    small = hs.load_model(hs.DEMO_MODEL_SOURCE, config=hs.EngineConfig(max_result_bytes=1000))
    with pytest.raises(errors.ResultTooLargeError, match="max_result_bytes"):
        hs.evaluate(small, np.zeros((4, 10), np.float32))


def test_keras_model_is_wrapped_once() -> None:
    keras_model = refs.tanh_mlp(3)
    hs.gradient(keras_model, np.zeros((2, 3), np.float32))
    hs.gradient(keras_model, np.zeros((2, 3), np.float32))
    assert as_model(keras_model).metadata().compile_count == 1


def test_loading_a_model_turns_tf32_off() -> None:
    hs.load_model(hs.DEMO_MODEL_SOURCE)
    assert tf.config.experimental.tensor_float_32_execution_enabled() is False


def test_full_hessian_runs_at_its_own_batch_size_never_padded() -> None:
    model = hs.load_model(refs.tanh_mlp(4, seed=3), config=hs.EngineConfig(max_batch_size=8))
    x = RNG.normal(size=(4, 4)).astype(np.float32)
    hs.hessian(model, x[:3])
    hs.hessian(model, x[:4])
    per_example = model.metadata().compile_count
    assert per_example == 1
    full = hs.hessian(model, x[:3], full=True)
    hs.evaluate(model, x[:3], full=True)
    assert model.metadata().compile_count == per_example + 1
    hs.hessian(model, x[:4], full=True)
    assert model.metadata().compile_count == per_example + 2, "B=3 and B=4 share a padded full Hessian"
    np.testing.assert_allclose(full, refs.tf_hessians(refs.tanh_mlp(4, seed=3), x[:3]), rtol=1e-5, atol=1e-7)


def test_full_hessian_exactly_at_the_limit_is_computed() -> None:
    limit = 3 * 4 * 3 * 4 * 4
    model = hs.load_model(refs.tanh_mlp(4, seed=3), config=hs.EngineConfig(max_result_bytes=limit))
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    assert hs.hessian(model, x, full=True).nbytes == limit
    with pytest.raises(errors.ResultTooLargeError):
        hs.hessian(model, RNG.normal(size=(4, 4)).astype(np.float32), full=True)


def test_out_of_range_ids_are_refused_naming_the_input_and_range() -> None:
    model = hs.load_model(refs.embedding_model(vocabulary=5))
    assert model.input_ranges == {"ids": (0, 5)}
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    good = np.array([[0, 4], [2, 3]], np.int32)
    blocks = hs.hessian(model, {"x": x, "ids": good}, wrt="x")
    assert blocks.shape == (2, 3, 3)
    for bad, shown in ((np.array([[0, 5], [2, 3]], np.int32), "5"), (np.array([[0, 1], [-1, 3]], np.int32), "-1")):
        with pytest.raises(errors.InvalidArgumentError, match=rf"holds {shown}, outside \[0, 5\)") as raised:
            hs.hessian(model, {"x": x, "ids": bad}, wrt="x")
        assert raised.value.field == "x[ids]"
        assert raised.value.reason == "INPUT_OUT_OF_RANGE"
        assert raised.value.metadata == {"value": shown, "low": "0", "high": "5"}
        with pytest.raises(errors.InvalidArgumentError, match=r"\[0, 5\)"):
            hs.gradient(model, {"x": x, "ids": bad}, wrt="x")


def _two_tables_model() -> keras.Model:
    """``ids`` int64 (2,) into Embeddings of 9 and 6 rows; ``count`` int32 (1,) only scales."""
    keras.utils.set_random_seed(15)
    x = keras.Input((3,), name="x")
    ids = keras.Input((2,), dtype="int64", name="ids")
    count = keras.Input((1,), dtype="int32", name="count")
    tables = [keras.layers.Flatten()(keras.layers.Embedding(rows, 2)(ids)) for rows in (9, 6)]
    scale = keras.ops.cast(count, "float32")
    hidden = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([x * scale, *tables]))
    return keras.Model({"x": x, "ids": ids, "count": count}, keras.layers.Dense(1)(hidden))


def test_a_saved_models_lookup_ranges_are_found_by_probing(tmp_path) -> None:
    """A SavedModel hides its Embeddings: each integer input is probed at load.
    Without the range, a warm model's XLA function clamps id 5 to the last row and answers."""
    keras_model = refs.embedding_model(vocabulary=5)
    keras_model.export(tmp_path / "embedding", verbose=False)
    model = hs.load_model(tmp_path / "embedding")
    assert model.input_ranges == {"ids": (0, 5)}
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    good = {"x": x, "ids": np.array([[0, 4], [2, 3]], np.int32)}
    np.testing.assert_allclose(
        hs.hessian(model, good, wrt="x"), hs.hessian(keras_model, good, wrt="x"), rtol=1e-5, atol=1e-7
    )
    with pytest.raises(errors.InvalidArgumentError, match=r"holds 5, outside \[0, 5\)") as raised:
        hs.hessian(model, {"x": x, "ids": np.array([[0, 5], [2, 3]], np.int32)}, wrt="x")
    assert raised.value.reason == "INPUT_OUT_OF_RANGE" and raised.value.field == "x[ids]"

    two_tables = _two_tables_model()
    two_tables.export(tmp_path / "two_tables", verbose=False)
    probed = hs.load_model(tmp_path / "two_tables")
    assert probed.input_ranges == {"ids": (0, 6)}, "the smaller table bounds the input; count indexes nothing"
    inputs = {"x": x, "ids": np.array([[5, 0], [1, 2]], np.int64), "count": np.array([[100_000], [3]], np.int32)}
    np.testing.assert_allclose(
        hs.hessian(probed, inputs, wrt="x"), hs.hessian(two_tables, inputs, wrt="x"), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(errors.InvalidArgumentError, match=r"holds 6, outside \[0, 6\)"):
        hs.gradient(probed, {**inputs, "ids": np.array([[6, 0], [1, 2]], np.int64)}, wrt="x")


class _CountingModule(tf.Module):
    """A SavedModel whose integer input ``n`` is a count (a range's length), not an id."""

    @tf.function(
        input_signature=[tf.TensorSpec((None, 3), tf.float32, name="x"), tf.TensorSpec((None, 1), tf.int32, name="n")]
    )
    def serve(self, x: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
        steps = tf.cast(tf.size(tf.range(tf.reduce_max(n))), tf.float32)
        return tf.reduce_sum(tf.tanh(x), axis=1, keepdims=True) * (1.0 + 0.0 * steps)


def test_an_integer_input_that_indexes_nothing_gets_no_range(tmp_path) -> None:
    """The probe starts at the dtype's smallest value: a count allocates nothing."""
    tf.saved_model.save(_CountingModule(), str(tmp_path / "counting"))
    model = hs.load_model(tmp_path / "counting")
    assert model.input_ranges == {}
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    blocks = hs.hessian(model, {"x": x, "n": np.array([[4], [9]], np.int32)}, wrt="x")
    t = np.tanh(x)
    np.testing.assert_allclose(blocks, np.stack([np.diag(-2 * r * (1 - r * r)) for r in t]), rtol=1e-5, atol=1e-7)


def test_probe_varies_integer_inputs() -> None:
    model = hs.load_model(refs.integer_mixing_model())
    x = {"x": RNG.normal(size=(3, 3)).astype(np.float32), "ids": np.array([[1], [2], [7]], np.int32)}
    with pytest.raises(errors.BatchDependenceError):
        hs.hessian(model, x, wrt="x")
    assert model.metadata().batch_independent is False
    keras_model = refs.integer_mixing_model()
    np.testing.assert_allclose(
        hs.hessian(model, x, wrt="x", full=True), refs.tf_hessians_wrt(keras_model, x, "x"), rtol=1e-4, atol=1e-6
    )


def test_probe_sees_examples_that_mix_only_through_gradients() -> None:
    model = hs.load_model(refs.gradient_only_mixing_model())
    with pytest.raises(errors.BatchDependenceError):
        hs.hessian(model, RNG.normal(size=(3, 3)).astype(np.float32))
    assert model.metadata().batch_independent is False


def test_output_size_is_looked_up_per_input_shape() -> None:
    model = hs.load_model(refs.per_step_model())
    for length in (3, 5, 3):
        x = RNG.normal(size=(2, length, 2)).astype(np.float32)
        weights = np.linspace(-1.0, 1.0, length).astype(np.float32)
        blocks = hs.hessian(model, x, output_weights=weights)
        assert blocks.shape == (2, length, 2, length, 2)
        reference = refs.finite_difference_hessians(refs.float64_value(refs.per_step_model(), weights), x)
        np.testing.assert_allclose(blocks, reference, rtol=1e-3, atol=1e-5)


def test_after_warmup_the_first_requests_compile_nothing() -> None:
    model = hs.load_model(refs.tanh_mlp(4, outputs=2, seed=5), config=hs.EngineConfig(max_batch_size=8))
    hs.warmup(model, [3, 8])
    warmed = model.metadata().compile_count
    assert warmed == 2 * 3
    for batch in (3, 4, 5, 8):
        x = RNG.normal(size=(batch, 4)).astype(np.float32)
        hs.hessian(model, x)
        hs.evaluate(model, x)
        hs.gradient(model, x)
        hs.hvp(model, x, RNG.normal(size=(batch, 4)).astype(np.float32))
    assert model.metadata().compile_count == warmed


def test_padding_never_takes_a_result_over_the_limit() -> None:
    limit = 3 * (1 + 4 + 16) * 4
    model = hs.load_model(refs.tanh_mlp(4, seed=3), config=hs.EngineConfig(max_result_bytes=limit))
    x = RNG.normal(size=(4, 4)).astype(np.float32)
    blocks = hs.hessian(model, x[:3])
    hs.gradient(model, x[:3])
    assert sorted((key.kind, key.batch) for key in model.functions) == [("gradient", 4), ("hessian", 3)]
    np.testing.assert_allclose(blocks, refs.diagonal_blocks(refs.tf_hessians(refs.tanh_mlp(4, seed=3), x[:3]), 3), rtol=1e-4, atol=1e-6)
    with pytest.raises(errors.ResultTooLargeError):
        hs.hessian(model, x)
