"""Warm-up by method and precision: what is named is compiled before the first call,
what is not named is not, and a name that is not known is refused before any work."""

from __future__ import annotations

import numpy as np
import pytest

import hessd_server as hs
from hessd_server.engine.config import (
    DEFAULT_WARMUP_BATCH_SIZES,
    WARMUP_METHODS,
    check_warmup_plan,
)
from support import engine_references as refs

RNG = np.random.default_rng(23)
WARMED_BATCH = 3
"""Warmed as its bucket, 4 (a full Hessian as 3 itself); the first calls below use 3
examples, and 4 for the methods that pad to the bucket."""


def _first_calls(model: hs.Model, precision: str) -> None:
    """One call of every method of WARMUP_METHODS, at both batch sizes the warmed bucket holds."""
    for batch in (WARMED_BATCH, 4):
        x = RNG.normal(size=(batch, 4)).astype(np.float32)
        hs.hessian(model, x, precision=precision)
        hs.evaluate(model, x, precision=precision)
        hs.gradient(model, x, precision=precision)
        hs.hvp(model, x, RNG.normal(size=(batch, 4)).astype(np.float32), precision=precision)
        if batch == WARMED_BATCH:
            hs.hessian(model, x, full=True, precision=precision)
        hs.hessian_diagonal(model, x, precision=precision, seed=1)
        hs.hessian_trace(model, x, precision=precision, seed=1)
        hs.hessian_eigen(model, x, precision=precision, seed=1)
        hs.hessian_spectrum(model, x, precision=precision, seed=1)


def test_every_named_method_at_a_named_precision_compiles_nothing_on_its_first_calls() -> None:
    model = hs.load_model(refs.tanh_mlp(4, outputs=2, seed=7), config=hs.EngineConfig(max_batch_size=8))
    hs.warmup(model, [WARMED_BATCH], methods=WARMUP_METHODS, precisions=["float64"])
    warmed = model.metadata().compile_count
    assert {key.precision for key in model.functions} == {"float64"}
    _first_calls(model, "float64")
    assert model.metadata().compile_count == warmed
    _first_calls(model, "float32")
    assert model.metadata().compile_count > warmed, "float32 was not warmed, so its first calls compile"


def test_the_default_warms_the_per_example_methods_at_float32_over_three_buckets() -> None:
    model = hs.load_model(refs.tanh_mlp(4, seed=8))
    hs.warmup(model)
    buckets = sorted({model.config.bucket_for(b) for b in DEFAULT_WARMUP_BATCH_SIZES})
    assert buckets == [1, 8, 32]
    kinds = {(key.kind, key.precision, key.batch) for key in model.functions}
    assert kinds == {(kind, "float32", b) for kind in ("hessian", "gradient", "hvp") for b in buckets}


def test_only_the_named_methods_are_compiled() -> None:
    model = hs.load_model(refs.tanh_mlp(4, seed=9))
    model.warmup([2], methods=["hvp", "hessian_trace"], precisions=["float32"])
    assert {key.kind.partition("/")[0] for key in model.functions} == {"hvp", "trace"}


@pytest.mark.parametrize(
    ("methods", "precisions", "message"),
    [
        (["hessian", "trace"], ["float32"], r"unknown warm-up methods \['trace'\]; known: hessian, evaluate"),
        (["hessian"], ["float16"], r"unknown warm-up precisions \['float16'\]; known: float32, float64"),
        ([], ["float32"], "no warm-up method named"),
    ],
)
def test_an_unknown_or_missing_name_is_refused_before_anything_compiles(
    methods: list[str], precisions: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_warmup_plan(methods, precisions)
    model = hs.load_model(refs.tanh_mlp(4, seed=10))
    with pytest.raises(ValueError, match=message):
        hs.warmup(model, [2], methods=methods, precisions=precisions)
    assert model.metadata().compile_count == 0
