"""Outputs carry the model's own names, and warm-up does not flood the log with
TensorFlow's retracing warnings (each bucket is its own function by design)."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import pytest

import hessd_server as hs


def _inputs() -> keras.KerasTensor:
    return keras.Input((3,), name="x")


def test_a_functional_model_reports_its_output_layer_name() -> None:
    inputs = _inputs()
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(inputs)
    model = hs.load_model(keras.Model(inputs, keras.layers.Dense(1, name="price")(hidden)))
    assert [info.name for info in model.metadata().outputs] == ["price"]


def test_dict_outputs_are_named_by_their_keys_and_layers_otherwise() -> None:
    inputs = _inputs()
    hidden = keras.layers.Dense(4, activation="tanh")(inputs)
    by_key = keras.Model(
        inputs, {"risk": keras.layers.Dense(2)(hidden), "price": keras.layers.Dense(1)(hidden)}
    )
    outputs = hs.load_model(by_key).metadata().outputs
    assert [(info.name, info.shape) for info in outputs] == [("price", (1,)), ("risk", (2,))]
    listed = keras.Model(
        inputs, [keras.layers.Dense(1, name="bid")(hidden), keras.layers.Dense(1, name="ask")(hidden)]
    )
    assert [info.name for info in hs.load_model(listed).metadata().outputs] == ["bid", "ask"]
    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="score")])
    assert [info.name for info in hs.load_model(sequential).metadata().outputs] == ["score"]


def test_a_saved_model_reports_its_signature_output_names(tmp_path: Path) -> None:
    inputs = _inputs()
    keras.Model(inputs, keras.layers.Dense(1, name="price")(inputs)).export(
        tmp_path / "exported", verbose=False
    )
    outputs = hs.load_model(tmp_path / "exported").metadata().outputs
    assert [info.name for info in outputs] == ["output_0"]


def test_warmup_over_many_buckets_logs_no_retracing_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = hs.load_model(hs.DEMO_MODEL_SOURCE, config=hs.EngineConfig(jit_compile=False))
    tensorflow_logger = logging.getLogger("tensorflow")
    tensorflow_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="tensorflow"):
            hs.warmup(model, [1, 2, 4])
    finally:
        tensorflow_logger.removeHandler(caplog.handler)
    assert model.metadata().compile_count >= 3 * 3
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
