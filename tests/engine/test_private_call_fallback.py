"""A TensorFlow without ``ConcreteFunction._call_flat`` still computes the same results.

The engine calls each compiled function through TensorFlow's private
``_call_flat``; without it, it falls back to the concrete function's public call.
The fixture hands the engine concrete functions that lack the private method
(everything else, the public call included, is TensorFlow's own), and the
results are compared with the analytic ones of y = sum((x A)^2): Hessian 2 A A^T,
gradient 2 A A^T x.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager.polymorphic_function.polymorphic_function import Function

import hessd_server as hs
from support.engine_references import quadratic_model
from hessd_server.engine import compiled

D, K, B = 5, 3, 4
A = np.random.default_rng(11).normal(size=(D, K))
HESSIAN = 2 * A @ A.T


class _WithoutPrivateCall:
    """A concrete function as a TensorFlow without ``_call_flat`` would present it;
    counts its public calls."""

    def __init__(self, concrete: Any, public_calls: list[int]) -> None:
        self._concrete = concrete
        self._public_calls = public_calls

    def __getattr__(self, name: str) -> Any:
        if name == compiled.PRIVATE_CALL:
            raise AttributeError(name)
        return getattr(self._concrete, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._public_calls.append(1)
        return self._concrete(*args, **kwargs)


@pytest.fixture
def without_private_call(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every ``tf.function``'s concrete function lacks ``_call_flat`` until the test ends;
    yields the list its public calls are counted in."""
    public_calls: list[int] = []
    original = Function.get_concrete_function

    def get_concrete_function(self: Function, *args: Any, **kwargs: Any) -> _WithoutPrivateCall:
        return _WithoutPrivateCall(original(self, *args, **kwargs), public_calls)

    monkeypatch.setattr(Function, "get_concrete_function", get_concrete_function)
    yield public_calls


def test_this_tensorflow_has_the_private_call_the_fast_path_uses() -> None:
    concrete = tf.function(lambda x: 2 * x).get_concrete_function(tf.TensorSpec((), tf.float32))
    assert callable(getattr(concrete, compiled.PRIVATE_CALL, None))


def test_without_the_private_call_results_are_still_the_analytic_ones(
    without_private_call: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    model = hs.load_model(quadratic_model(A), name="no_private_call")
    x = np.random.default_rng(1).normal(size=(B, D)).astype(np.float32)
    v = np.random.default_rng(2).normal(size=(B, D)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        hessian = hs.hessian(model, x)
        gradient = hs.gradient(model, x)
        hvp = hs.hvp(model, x, v)
        full = hs.hessian(model, x, full=True)
    np.testing.assert_allclose(hessian, np.broadcast_to(HESSIAN, (B, D, D)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gradient, x.astype(np.float64) @ HESSIAN, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(hvp, v.astype(np.float64) @ HESSIAN, rtol=1e-4, atol=1e-4)
    blocks = np.einsum("ij,bc->bicj", HESSIAN, np.eye(B))
    np.testing.assert_allclose(full, blocks, rtol=1e-4, atol=1e-4)
    assert len(without_private_call) >= 4
    calls_so_far = len(without_private_call)
    np.testing.assert_allclose(hs.hessian(model, 2 * x), hessian, rtol=1e-4, atol=1e-4)
    assert len(without_private_call) > calls_so_far
    assert compiled.PRIVATE_CALL in caplog.text
