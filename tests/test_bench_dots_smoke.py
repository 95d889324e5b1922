"""Smoke test of benchmarks/bench_dots.py: its products are the structural program's,
each backend's result is checked before timing, and a wrong one stops the run.
Nothing here asserts a time."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np
import pytest
from support.benchmark_modules import import_benchmark

@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark module, imported as ``python benchmarks/bench_dots.py`` would see it."""
    return import_benchmark("bench_dots")


@pytest.fixture
def quick(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Few runs; without JAX (a benchmark extra) the TensorFlow backends alone."""
    monkeypatch.setattr(bench, "MIN_RUNS", 1)
    monkeypatch.setattr(bench, "SECONDS", 0.0)
    if importlib.util.find_spec("jax") is None:
        monkeypatch.delitem(bench.BACKENDS, "JAX")


def test_the_products_are_the_structural_programs_at_both_benchmark_sizes(bench: ModuleType) -> None:
    dim, batch, width = 256, 64, bench.HIDDEN
    row_pairs, through_w2, grams = bench.dots_of(dim, batch)
    assert row_pairs.flops == 2 * batch * width * dim * (dim + 1) // 2
    assert through_w2.flops == 2 * batch * dim * width * width, "every row of every example goes through W2 once"
    assert grams.count == 10 and grams.flops == 2 * 10 * batch * (dim // 4) ** 2 * width
    small = bench.dots_of(64, 32)
    assert [dot.count for dot in small] == [1, 1, 1], "below 128 features the Jacobian is one block"


@pytest.mark.parametrize("swapped", [False, True])
def test_every_backend_is_checked_then_timed(bench: ModuleType, quick: None, swapped: bool) -> None:
    dot = bench.Dot("Gram", (3, 4, 8), (3, 4, 8), 2, transpose_b=True)
    row = bench.measure(8, 3, dot, swapped, "float32")
    assert set(row.medians_s) == set(bench.BACKENDS) and all(t > 0 for t in row.medians_s.values())
    assert "Gram" in bench.render_table([row])[-1]


def test_a_backend_that_computes_a_wrong_product_stops_the_run(
    bench: ModuleType, quick: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def off_by_one(dot: object, swapped: bool):
        right = bench.BACKENDS["TF XLA"](dot, swapped)
        return lambda *operands: [np.asarray(result) + 1.0 for result in right(*operands)]

    monkeypatch.setitem(bench.BACKENDS, "TF graph", off_by_one)
    with pytest.raises(AssertionError, match="TF graph computes product wrongly"):
        bench.measure(8, 3, bench.Dot("product", (5, 8), (8, 6), 1), False, "float32")
