"""Per-example Hessian strategies: each one, forced, against the others and
float64 finite differences; the structural path's refusals; autotuning and
its correctness gate. Nothing here is timed: the tuner's own records are read."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

import hessd_server as hs
from hessd import errors
from hessd_server.engine import autotune, strategies, structural
from hessd_server.engine.cancellation import Cancellation, cancellable
from hessd_server.engine.model_loading import as_model
from hessd.results import StrategyTiming
from support import engine_references as refs

RNG = np.random.default_rng(21)
NAMES = tuple(strategies.STRATEGIES)


class Doubled(keras.layers.Layer):
    """A custom layer (2x), which the structural path cannot know."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return 2.0 * x


def skip_model() -> keras.Model:
    """Functional: tanh(Dense(x)) + Dense(x) -> sigmoid -> Dense(1), a skip connection through Add."""
    keras.utils.set_random_seed(31)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="tanh")(inputs)
    skipped = keras.layers.Add()([hidden, keras.layers.Dense(6)(inputs)])
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Activation("sigmoid")(skipped)))


def normalized_model() -> keras.Model:
    """Normalization -> Dense(softplus) -> Rescaling -> Concatenate with the input -> Dense."""
    keras.utils.set_random_seed(32)
    inputs = keras.Input((3,))
    normalization = keras.layers.Normalization(mean=[1.0, -0.5, 0.2], variance=[4.0, 0.25, 1.5])
    hidden = keras.layers.Dense(5, activation="softplus")(normalization(inputs))
    rescaled = keras.layers.Rescaling(scale=0.5, offset=0.1)(hidden)
    joined = keras.layers.Concatenate()([rescaled, inputs])
    return keras.Model(inputs, keras.layers.Dense(2, activation="tanh")(joined))


def max_pooling_model() -> keras.Model:
    """Conv2D -> MaxPooling2D -> Flatten -> Dense(1): max pooling is outside the closed form."""
    keras.utils.set_random_seed(34)
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, activation="tanh"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )


def custom_layer_model() -> keras.Model:
    keras.utils.set_random_seed(33)
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(1)(Doubled()(keras.layers.Dense(4, activation="tanh")(inputs))))


CLOSED_FORM_MODELS: dict[str, tuple[Callable[[], keras.Model], tuple[int, ...]]] = {
    "seed_linear": (refs.seed_linear_model, (10,)),
    "seed_sigmoid": (refs.seed_sigmoid_model, (10,)),
    "mlp": (lambda: refs.tanh_mlp(5, outputs=2), (5,)),
    "skip_add": (skip_model, (4,)),
    "two_outputs": (refs.two_output_model, (4,)),
    "normalization_rescaling": (normalized_model, (3,)),
    "batchnorm_dropout": (refs.batchnorm_dropout_model, (6,)),
    "conv2d": (refs.conv_model, (5, 5, 2)),
}
AUTODIFF_ONLY_MODELS: dict[str, tuple[Callable[[], keras.Model], tuple[int, ...]]] = {
    "conv2d_max_pooling": (lambda: max_pooling_model(), (6, 6, 2)),
}
"""The LSTM over sequences of unknown length (pfor fails, so the tiled reference
is used; the structural path refuses) is test_derivatives' LSTM test."""
CANNOT_RUN = {("normalization_rescaling", "forward_over_reverse"): "pfor"}
"""(model, strategy) pairs TensorFlow cannot run (forward mode lacks a rule for
an op in Normalization's gradient), with the reference strategy used instead."""
OUTPUT_WEIGHTS = {"two_outputs": np.array([0.5, -1.0, 2.0, 0.25, 1.5], np.float32)}


def _forced(keras_model: keras.Model, strategy: str) -> hs.Model:
    return hs.load_model(keras_model, config=hs.EngineConfig(strategy=strategy, max_batch_size=4))


def _timings(model: hs.Model, outcome: str | None = None) -> dict[str, StrategyTiming]:
    return {t.strategy: t for t in model.metadata().strategy_timings if outcome is None or t.outcome == outcome}


@pytest.mark.parametrize("name", [*CLOSED_FORM_MODELS, *AUTODIFF_ONLY_MODELS])
def test_every_forced_strategy_agrees_with_the_others_and_finite_differences(name: str) -> None:
    build, shape = {**CLOSED_FORM_MODELS, **AUTODIFF_ONLY_MODELS}[name]
    keras_model = build()
    x = RNG.normal(size=(2, *shape)).astype(np.float32)
    weights = OUTPUT_WEIGHTS.get(name)
    reference = refs.finite_difference_hessians(refs.float64_value(keras_model, weights), x)
    results = {}
    for strategy in NAMES:
        model = _forced(keras_model, strategy)
        results[strategy] = hs.hessian(model, x, output_weights=weights)
        np.testing.assert_allclose(results[strategy], reference, rtol=2e-3, atol=2e-4, err_msg=strategy)
        chosen = model.metadata().strategy
        if name in AUTODIFF_ONLY_MODELS and strategy == "structural":
            assert chosen in strategies.REFERENCES
            assert _timings(model)["structural"].outcome == "refused"
        elif (name, strategy) in CANNOT_RUN:
            assert chosen == CANNOT_RUN[name, strategy] and _timings(model)[strategy].outcome == "failed"
        else:
            assert chosen == strategy, _timings(model)
    for strategy, blocks in results.items():
        np.testing.assert_allclose(blocks, results["tiled"], rtol=1e-5, atol=1e-6, err_msg=strategy)


@pytest.mark.parametrize("name", ["mlp", "skip_add", "normalization_rescaling"])
def test_every_strategy_at_float64_matches_finite_differences_closely(name: str) -> None:
    build, shape = CLOSED_FORM_MODELS[name]
    keras_model = build()
    x = RNG.normal(size=(3, *shape)).astype(np.float32)
    reference = refs.finite_difference_hessians(refs.float64_value(keras_model), x)
    for strategy in NAMES:
        model = _forced(keras_model, strategy)
        blocks = hs.hessian(model, x, precision="float64")
        assert blocks.dtype == np.float64
        np.testing.assert_allclose(blocks, reference, rtol=1e-6, atol=1e-7, err_msg=strategy)
        assert _timings(model)[strategy].precision == "float64"
        assert model.metadata().strategy == CANNOT_RUN.get((name, strategy), strategy)


def test_structural_path_refuses_an_unknown_layer_and_records_the_fallback() -> None:
    keras_model = custom_layer_model()
    model = hs.load_model(keras_model)
    x = RNG.normal(size=(3, 3)).astype(np.float32)
    blocks = hs.hessian(model, x)
    np.testing.assert_allclose(
        blocks, refs.finite_difference_hessians(refs.float64_value(keras_model), x), rtol=1e-3, atol=1e-4
    )
    refused = _timings(model)["structural"]
    assert refused.outcome == "refused" and refused.seconds is None
    assert "Doubled" in refused.detail
    assert model.metadata().strategy in strategies.REFERENCES


def test_structural_refusal_names_what_it_cannot_do() -> None:
    call = as_model(custom_layer_model()).call_for("float32")
    assert "Doubled" in str(structural.refusal(call, "x"))
    assert structural.refusal(as_model(refs.tanh_mlp(3)).call_for("float32"), "x") is None
    assert structural.refusal(as_model(refs.conv_model()).call_for("float32"), "x") is None
    assert "max pooling" in str(structural.refusal(as_model(max_pooling_model()).call_for("float32"), "x"))
    softmax = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    assert "activation" in str(structural.refusal(as_model(softmax).call_for("float32"), "x"))


def test_autotune_picks_the_fastest_working_strategy_per_bucket_and_records_timings(tmp_path: Path) -> None:
    config = hs.EngineConfig(max_batch_size=4, autotune_tiled=True, tuning_cache=str(tmp_path))
    model = hs.load_model(refs.tanh_mlp(5, outputs=2), config=config)
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    blocks = hs.hessian(model, x)
    np.testing.assert_allclose(
        blocks, refs.finite_difference_hessians(refs.float64_value(refs.tanh_mlp(5, outputs=2)), x), rtol=1e-3, atol=1e-4
    )
    timings = [t for t in model.metadata().strategy_timings if t.batch == 4]
    assert sorted(t.strategy for t in timings) == sorted(NAMES)
    assert all(t.outcome in ("chosen", "passed") and t.seconds is not None and t.seconds > 0 for t in timings)
    assert {t.source for t in timings} == {"tuned"}
    (chosen,) = [t for t in timings if t.outcome == "chosen"]
    assert chosen.seconds == min(t.seconds for t in timings)
    assert model.metadata().strategy == chosen.strategy
    assert model.metadata().compile_count == 1, "only the chosen strategy's function is cached and counted"
    hs.hessian(model, x[:1])
    tuned = model.metadata().strategy_timings
    assert {t.batch for t in tuned} == {1, 4}
    hs.hessian(model, x)
    hs.hessian(model, x[:1])
    assert model.metadata().compile_count == 2 and model.metadata().strategy_timings == tuned


def _perturbed(target: strategies.Target, x: tf.Tensor, weights: tf.Tensor) -> strategies.Result:
    values, gradient, blocks = strategies.STRATEGIES["pfor"](target, x, weights)
    return values, gradient, blocks * (1 + 1e-4)


def test_a_forced_wrong_strategy_is_rejected_by_the_correctness_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(strategies.STRATEGIES, "perturbed", _perturbed)
    keras_model = refs.tanh_mlp(4)
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    model = _forced(keras_model, "perturbed")
    blocks = hs.hessian(model, x)
    np.testing.assert_array_equal(blocks, hs.hessian(_forced(keras_model, "pfor"), x))
    rejected = _timings(model)["perturbed"]
    assert rejected.outcome == "rejected" and "blocks differ from pfor" in rejected.detail
    assert model.metadata().strategy == "pfor"


def test_autotune_tries_the_tiled_strategies_only_where_pfor_fails_by_default() -> None:
    """Where pfor fails (an LSTM over sequences of unknown length) they are tried:
    see test_derivatives' LSTM tests."""
    mlp = hs.load_model(refs.tanh_mlp(4))
    hs.hessian(mlp, RNG.normal(size=(1, 4)).astype(np.float32))
    assert {s: t.outcome for s, t in _timings(mlp).items() if s in strategies.TILED} == dict.fromkeys(strategies.TILED, "skipped")


def test_autotune_drops_a_wrong_strategy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(strategies.STRATEGIES, "perturbed", _perturbed)
    model = hs.load_model(refs.tanh_mlp(4), config=hs.EngineConfig(autotune_runs=1, tuning_cache=str(tmp_path)))
    hs.hessian(model, RNG.normal(size=(2, 4)).astype(np.float32))
    assert _timings(model)["perturbed"].outcome == "rejected"
    assert model.metadata().strategy != "perturbed"


def _wrong_for_one_example(target: strategies.Target, x: tf.Tensor, weights: tf.Tensor) -> strategies.Result:
    values, gradient, blocks = strategies.STRATEGIES["pfor"](target, x, weights)
    return values, gradient, blocks * (1 + 1e-4) if x.shape[0] == 1 else blocks


def test_a_small_bucket_checks_the_strategy_it_takes_and_tunes_itself_on_a_mismatch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(strategies.STRATEGIES, "wrong_for_one", _wrong_for_one_example)
    keras_model = refs.tanh_mlp(4)
    model = hs.load_model(keras_model, config=hs.EngineConfig(strategy="wrong_for_one", max_batch_size=4))
    x = RNG.normal(size=(4, 4)).astype(np.float32)
    hs.warmup(model, [1, 2, 4])
    by_batch: dict[int, list[StrategyTiming]] = {}
    for timing in model.metadata().strategy_timings:
        by_batch.setdefault(timing.batch, []).append(timing)
    assert [(t.strategy, t.outcome) for t in by_batch[2]] == [("wrong_for_one", "chosen")]
    assert "matches batch 4's results" in by_batch[2][0].detail
    first = by_batch[1][0]
    assert (first.strategy, first.outcome) == ("wrong_for_one", "rejected")
    assert first.detail.startswith("as chosen at batch 2: blocks differ from batch 2's")
    outcomes = {(t.strategy, t.outcome) for t in by_batch[1][1:]}
    assert ("pfor", "chosen") in outcomes and ("wrong_for_one", "rejected") in outcomes
    expected = hs.hessian(_forced(keras_model, "pfor"), x[:1])
    np.testing.assert_array_equal(hs.hessian(model, x[:1]), expected)


def test_a_small_bucket_is_tuned_when_the_larger_buckets_function_was_evicted() -> None:
    model = hs.load_model(refs.tanh_mlp(4), config=hs.EngineConfig(max_batch_size=4, max_compiled_functions=1))
    hs.warmup(model, [4])
    x = RNG.normal(size=(4, 4)).astype(np.float32)
    hs.gradient(model, x)
    hs.hessian(model, x[:1])
    tuned = {t.strategy: t.outcome for t in model.metadata().strategy_timings if t.batch == 1}
    assert {tuned["pfor"], tuned["structural"]} == {"chosen", "passed"}


def test_an_unknown_forced_strategy_is_recorded_and_the_reference_used() -> None:
    model = _forced(refs.tanh_mlp(4), "no_such_strategy")
    hs.hessian(model, RNG.normal(size=(1, 4)).astype(np.float32))
    assert _timings(model)["no_such_strategy"].outcome == "failed"
    assert model.metadata().strategy == "pfor"


class _Interrupting:
    """A strategy for tests: pfor's result, plus a zero from a numpy function
    that runs ``interrupt`` on call number ``at`` (the first call is the tuner's
    first run, the next ones its timed calls). Graph mode only."""

    def __init__(self, at: int, interrupt: Callable[[], None]) -> None:
        self.at = at
        self.interrupt = interrupt
        self.calls = 0

    def _count(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.at:
            self.interrupt()
        return np.zeros_like(x)

    def __call__(self, target: strategies.Target, x: tf.Tensor, weights: tf.Tensor) -> strategies.Result:
        values, gradient, blocks = strategies.STRATEGIES["pfor"](target, x, weights)
        zero = tf.numpy_function(self._count, [values], values.dtype, stateful=True)
        return values + tf.ensure_shape(zero, values.shape), gradient, blocks


def _graph_mode_mlp(tuning_cache: Path) -> hs.Model:
    """Tuned by timing (the test strategies are only tried then), with records in ``tuning_cache``."""
    config = hs.EngineConfig(jit_compile=False, max_batch_size=4, tuning_cache=str(tuning_cache))
    return hs.load_model(refs.tanh_mlp(4), config=config)


def _raise_memory_error() -> None:
    raise MemoryError("a one-off failure")


def test_out_of_memory_while_timing_is_raised_and_records_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    flaky = _Interrupting(at=2, interrupt=_raise_memory_error)
    monkeypatch.setitem(strategies.STRATEGIES, "flaky", flaky)
    model = _graph_mode_mlp(tmp_path)
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    with pytest.raises(errors.OutOfMemoryError, match="ran out of memory"):
        hs.hessian(model, x)
    assert flaky.calls == 2
    metadata = model.metadata()
    assert metadata.strategy_timings == () and metadata.strategy is None and metadata.compile_count == 0
    assert list(tmp_path.rglob("*.json")) == [], "a transient failure wrote a tuning record"
    blocks = hs.hessian(model, x)
    np.testing.assert_allclose(
        blocks, refs.finite_difference_hessians(refs.float64_value(refs.tanh_mlp(4)), x), rtol=1e-3, atol=1e-4
    )
    timed = _timings(model)
    assert timed["flaky"].outcome in ("chosen", "passed") and timed["flaky"].seconds is not None
    assert model.metadata().compile_count == 1


def test_a_call_cancelled_while_timing_stops_before_its_next_timed_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cancellation = Cancellation()
    flaky = _Interrupting(at=2, interrupt=lambda: cancellation.set("cancelled"))
    monkeypatch.setitem(strategies.STRATEGIES, "flaky", flaky)
    model = _graph_mode_mlp(tmp_path)
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    with cancellable(cancellation), pytest.raises(errors.CancelledError):
        hs.hessian(model, x)
    assert flaky.calls == 2, "timed calls ran after the call was cancelled"
    assert model.metadata().strategy_timings == () and model.metadata().compile_count == 0
    hs.hessian(model, x)
    assert flaky.calls == 2 + 1 + model.config.autotune_runs
    assert {t.strategy for t in model.metadata().strategy_timings} >= {"pfor", "structural", "flaky"}


def test_a_failing_keras_graph_walk_is_a_refusal_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if a Keras release dropped the private ``call_fn`` of ``_run_through_graph``."""
    keras_model = skip_model()
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    reference = refs.finite_difference_hessians(refs.float64_value(skip_model()), x)
    original = type(keras_model)._run_through_graph

    def changed_api(self: keras.Model, inputs: object, **kwargs: object) -> object:
        if "call_fn" in kwargs:
            raise TypeError("_run_through_graph() got an unexpected keyword argument 'call_fn'")
        return original(self, inputs, **kwargs)

    monkeypatch.setattr(type(keras_model), "_run_through_graph", changed_api)
    model = hs.load_model(keras_model)
    np.testing.assert_allclose(hs.hessian(model, x), reference, rtol=1e-3, atol=1e-4)
    refused = _timings(model)["structural"]
    assert refused.outcome == "refused" and "could not walk" in refused.detail, refused
    assert model.metadata().strategy == "pfor"


def wide_model(dim: int) -> keras.Model:
    """An input wide enough for blocked Jacobians: tanh and linear Dense layers
    joined by Add -> sigmoid, concatenated with a softplus Dense and tanh of the
    input itself, -> Dense(1, tanh). Per-example, constant and identity
    Jacobians all reach a Hessian term."""
    keras.utils.set_random_seed(34)
    inputs = keras.Input((dim,))
    joined = keras.layers.Add()([keras.layers.Dense(8, activation="tanh")(inputs), keras.layers.Dense(8)(inputs)])
    parts = [
        keras.layers.Activation("sigmoid")(joined),
        keras.layers.Dense(3, activation="softplus")(inputs),
        keras.layers.Activation("tanh")(inputs),
    ]
    return keras.Model(inputs, keras.layers.Dense(1, activation="tanh")(keras.layers.Concatenate()(parts)))


@pytest.mark.parametrize("triangle_bytes", [structural.TRIANGLE_BYTES, 0], ids=["row_pairs", "per_example"])
def test_structural_blocks_and_constant_jacobians_match_pfor_and_finite_differences(
    triangle_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D = 130 splits the Jacobians in 4 uneven row blocks; with no room for the
    row-pair products, the first layers' terms are per-example Gram products."""
    monkeypatch.setattr(structural, "TRIANGLE_BYTES", triangle_bytes)
    dim = 130
    assert dim >= structural.BLOCKED_FROM_DIM and dim % structural.BLOCKS
    keras_model = wide_model(dim)
    x = RNG.normal(size=(2, dim)).astype(np.float32)
    model = _forced(keras_model, "structural")
    blocks = hs.hessian(model, x)
    assert model.metadata().strategy == "structural", _timings(model)
    assert _timings(model)["pfor"].outcome == "passed"
    np.testing.assert_allclose(blocks, hs.hessian(_forced(keras_model, "pfor"), x), rtol=1e-5, atol=1e-6)
    reference = refs.finite_difference_hessians(refs.float64_value(keras_model), x)
    np.testing.assert_allclose(blocks, reference, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(blocks, np.swapaxes(blocks, 1, 2), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("dim", [6, 130], ids=["one_block", "row_blocks"])
@pytest.mark.parametrize("name", ["structural", "pfor"])
def test_new_weights_are_used_by_every_strategy_without_a_new_compile(name: str, dim: int, precision: str) -> None:
    """The structural path makes its first layer's row-pair products when it
    traces, and the float64 copy is made at the first float64 call; after
    set_weights neither may answer with the old weights."""
    keras_model = wide_model(dim)
    model = _forced(keras_model, name)
    x = RNG.normal(size=(2, dim)).astype(np.float32)
    before = hs.hessian(model, x, precision=precision)
    assert model.metadata().strategy == name
    keras_model.set_weights([w * 1.5 for w in keras_model.get_weights()])
    after = hs.hessian(model, x, precision=precision)
    assert model.metadata().compile_count == 1
    expected = hs.hessian(_forced(keras_model, "pfor"), x, precision=precision)
    assert after.dtype == np.dtype(precision)
    np.testing.assert_allclose(after, expected, rtol=1e-5 if precision == "float32" else 1e-10, atol=1e-6 if precision == "float32" else 1e-12)
    assert not np.allclose(after, before, rtol=1e-3)


def test_warmup_chooses_at_the_largest_bucket_and_small_buckets_take_its_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    model = hs.load_model(refs.tanh_mlp(4), config=hs.EngineConfig(max_batch_size=8))
    hs.warmup(model, [1, 2, 8])
    by_batch: dict[int, list[StrategyTiming]] = {}
    for timing in model.metadata().strategy_timings:
        by_batch.setdefault(timing.batch, []).append(timing)
    assert list(by_batch) == [8, 2, 1]
    assert {t.strategy for t in by_batch[8] if t.outcome in ("chosen", "passed")} == {"pfor", "structural"}
    (chosen,) = [t for t in by_batch[8] if t.outcome == "chosen"]
    for batch, source in ((2, 8), (1, 2)):
        (inherited,) = by_batch[batch]
        assert (inherited.strategy, inherited.outcome) == (chosen.strategy, "chosen")
        assert f"as chosen at batch {source};" in inherited.detail
    assert model.metadata().compile_count == 3 * 3
    monkeypatch.setattr(autotune, "SMALL_BUCKET_ROWS", 0)
    tuned_alone = hs.load_model(refs.tanh_mlp(4), config=hs.EngineConfig(max_batch_size=8))
    hs.warmup(tuned_alone, [1, 8])
    passed = {(t.batch, t.strategy) for t in tuned_alone.metadata().strategy_timings if t.outcome in ("chosen", "passed")}
    assert passed == {(8, "pfor"), (8, "structural"), (1, "pfor"), (1, "structural")}
