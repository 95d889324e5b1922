"""How the engine fails: a transient failure on a function's first call changes
nothing about the model, a model no candidate can compile fails with a generic
InternalError (details in the log), and out-of-memory is OutOfMemoryError."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import hessd_server as hs
from hessd import errors
from support import engine_references as refs

RNG = np.random.default_rng(5)


def _sin_hessian(x: np.ndarray) -> np.ndarray:
    return np.stack([np.diag(-np.sin(row)) for row in x.astype(np.float64)])


def test_a_one_off_out_of_memory_on_a_first_call_pins_nothing() -> None:
    failure = refs.OneOffFailure()
    model = hs.load_model(refs.fails_once_model(failure))
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    hs.gradient(model, x)
    assert model.metadata().compile_count == 1, "failed candidates were counted as compiles"
    failure.armed = True
    with pytest.raises(errors.OutOfMemoryError, match="ran out of memory"):
        hs.hessian(model, x)
    assert failure.raised == 1
    after_failure = model.metadata()
    assert after_failure.strategy is None and after_failure.compile_count == 1
    assert [entry.split(":")[0] for entry in after_failure.xla_fallbacks] == ["gradient/float32"]
    np.testing.assert_allclose(hs.hessian(model, x), _sin_hessian(x), rtol=1e-5, atol=1e-7)
    metadata = model.metadata()
    assert metadata.strategy == "pfor" and metadata.compile_count == 2
    assert [entry.split(":")[0] for entry in metadata.xla_fallbacks] == ["gradient/float32", "hessian/float32"]


def test_out_of_memory_in_a_compiled_function_is_out_of_memory_error() -> None:
    failure = refs.OneOffFailure()
    model = hs.load_model(refs.fails_once_model(failure))
    x = RNG.normal(size=(3, 3)).astype(np.float32)
    hs.hessian(model, x)
    failure.armed = True
    with pytest.raises(errors.OutOfMemoryError, match="smaller batch"):
        hs.hessian(model, x)
    np.testing.assert_allclose(hs.hessian(model, x), _sin_hessian(x), rtol=1e-5, atol=1e-7)


def test_a_model_no_candidate_compiles_fails_with_a_generic_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="hessd_server")
    model = hs.load_model(refs.untraceable_model())
    with pytest.raises(errors.InternalError, match="cannot be differentiated") as raised:
        hs.hessian(model, RNG.normal(size=(2, 3)).astype(np.float32))
    assert "/srv/secret" not in raised.value.message
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/srv/secret/model_code.py" in logged and "xla=True" in logged and "xla=False" in logged
    assert model.metadata().compile_count == 0
