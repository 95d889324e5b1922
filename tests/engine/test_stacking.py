"""Requests stacked into one compiled call give each request its own answer:
bitwise what the same rows give in the same bucket, and to float32 rounding
what the request gives alone, with different output weights and v per request."""

from __future__ import annotations

import numpy as np
import pytest

import hessd_server as hs
from hessd.errors import ShapeError
from hessd_server.engine.execution import (
    PreparedCall,
    prepare_gradient,
    prepare_hvp,
    prepare_second_order,
    run_prepared,
)
from hessd_server.engine.stacking import can_stack, run_stacked, stack_key
from hessd_server.engine.validation import PreparedInputs
from support import engine_references as refs

RNG = np.random.default_rng(14)
SIZES = (3, 1, 2, 1, 1)
"""Batch sizes of the stacked requests: 8 examples in all, the first request alone in bucket 4."""


@pytest.fixture(scope="module")
def mlp() -> hs.Model:
    model = hs.load_model(refs.tanh_mlp(5, outputs=2), config=hs.EngineConfig(max_batch_size=8))
    model.warmup([1, 2, 4, 8])
    return model


def _requests(model: hs.Model, kind: str) -> list[PreparedCall]:
    calls = []
    for index, batch in enumerate(SIZES):
        x = RNG.normal(size=(batch, 5)).astype(np.float32)
        weights = RNG.normal(size=(2,) if index % 2 else (batch, 2)).astype(np.float32)
        options = {"output_weights": weights, "wrt": None, "precision": None}
        if kind == "gradient":
            calls.append(prepare_gradient(model, x, **options))
        elif kind == "hvp":
            v = RNG.normal(size=x.shape).astype(np.float32)
            calls.append(prepare_hvp(model, x, v, **options))
        else:
            calls.append(prepare_second_order(model, x, full=False, evaluation=kind == "evaluate", **options))
    return calls


def _parts(result: object) -> list[np.ndarray]:
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("kind", ["hessian", "evaluate", "gradient", "hvp"])
def test_stacked_requests_equal_their_unstacked_answers(mlp: hs.Model, kind: str) -> None:
    calls = _requests(mlp, kind)
    assert len({stack_key(call) for call in calls}) == 1 and all(can_stack(mlp, call) for call in calls)
    compiled = mlp.metadata().compile_count
    stacked = run_stacked(mlp, calls)
    assert mlp.metadata().compile_count == compiled
    rows = np.cumsum((0, *SIZES))
    together = run_stacked(mlp, [_concatenated(calls)])[0]
    for index, (call, result) in enumerate(zip(calls, stacked)):
        alone = run_prepared(mlp, call)
        for got, single, same_bucket in zip(_parts(result), _parts(alone), _parts(together)):
            assert got.shape == single.shape
            np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-6)
            assert np.array_equal(got, same_bucket[rows[index] : rows[index + 1]])


def test_stacked_results_match_the_library_call_of_each_request(mlp: hs.Model) -> None:
    x = RNG.normal(size=(2, 5)).astype(np.float32)
    v = RNG.normal(size=(2, 5)).astype(np.float32)
    weights = np.array([0.5, -2.0], np.float32)
    calls = [
        prepare_hvp(mlp, x, v, output_weights=weights, wrt=None, precision=None),
        prepare_hvp(mlp, x, -v, output_weights=None, wrt=None, precision=None),
    ]
    first, second = run_stacked(mlp, calls)
    np.testing.assert_allclose(first, hs.hvp(mlp, x, v, output_weights=weights), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second, hs.hvp(mlp, x, -v), rtol=1e-5, atol=1e-6)
    blocks = hs.hessian(mlp, x, output_weights=weights)
    np.testing.assert_allclose(first, np.einsum("bij,bj->bi", blocks, v), rtol=1e-4, atol=1e-5)


def test_keys_separate_what_cannot_share_a_call(mlp: hs.Model) -> None:
    x = RNG.normal(size=(2, 5)).astype(np.float32)
    options = {"output_weights": None, "wrt": None}
    base = stack_key(prepare_gradient(mlp, x, precision=None, **options))
    assert stack_key(prepare_gradient(mlp, x, precision="float64", **options)) != base
    assert stack_key(prepare_hvp(mlp, x, x, precision=None, **options)) != base
    full = prepare_second_order(mlp, x, full=True, evaluation=False, precision=None, **options)
    assert not can_stack(mlp, full)


def test_a_request_is_checked_before_it_can_be_stacked(mlp: hs.Model) -> None:
    with pytest.raises(ShapeError):
        prepare_hvp(
            mlp, np.ones((2, 5), np.float32), np.ones((3, 5), np.float32), output_weights=None, wrt=None, precision=None
        )


def _concatenated(calls: list[PreparedCall]) -> PreparedCall:
    """All rows of ``calls`` as one request: it runs in the same bucket as the stacked call."""
    first = calls[0]
    x = np.concatenate([call.inputs.x for call in calls])
    inputs = PreparedInputs(arrays={first.inputs.wrt[0]: x}, wrt=first.inputs.wrt, precision=first.inputs.precision)
    tangent = None if first.tangent is None else np.concatenate([call.tangent for call in calls])
    return PreparedCall(first.kind, inputs, np.concatenate([call.weights for call in calls]), tangent)


@pytest.mark.parametrize("kind", ["hessian", "evaluate", "gradient", "hvp"])
def test_served_results_are_views_of_the_engine_output_and_library_results_owned(
    mlp: hs.Model, kind: str
) -> None:
    call = _requests(mlp, kind)[0]
    served = _parts(run_prepared(mlp, call))
    assert all(not array.flags.writeable and not array.flags.owndata for array in served)
    x = RNG.normal(size=(2, 5)).astype(np.float32)
    owned = {
        "hessian": lambda: [hs.hessian(mlp, x)],
        "evaluate": lambda: list(hs.evaluate(mlp, x)),
        "gradient": lambda: [hs.gradient(mlp, x)],
        "hvp": lambda: [hs.hvp(mlp, x, x)],
    }[kind]()
    for array in owned:
        assert array.flags.writeable and array.flags.owndata
        array += 1.0  # the caller's to change
