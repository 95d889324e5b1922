"""Smoke test of benchmarks/bench_optimize.py's checks and ratios, on made-up solves
(running the benchmark needs a server child and minutes). Nothing here is timed."""

from __future__ import annotations

from collections import Counter
from types import ModuleType

import numpy as np
import pytest
from support.benchmark_modules import import_benchmark

@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark module, imported as ``python benchmarks/bench_optimize.py`` would see it."""
    return import_benchmark("bench_optimize")


def _solve(bench: ModuleType, fun: float, success: bool = True) -> object:
    return bench.Solve(np.zeros(2), fun, 3, Counter({"Evaluate": 4}), success)


def test_check_refuses_an_unconverged_solve_and_disagreeing_optima(bench: ModuleType) -> None:
    groups = {"exact": "unconstrained", "quasi": "unconstrained"}
    bench.check(16, {"exact": _solve(bench, 1.0), "quasi": _solve(bench, 1.0 + 1e-9)}, groups)
    with pytest.raises(bench.CheckError, match="quasi did not converge"):
        bench.check(16, {"exact": _solve(bench, 1.0), "quasi": _solve(bench, 1.0, success=False)}, groups)
    with pytest.raises(bench.CheckError, match="the unconstrained solutions disagree"):
        bench.check(16, {"exact": _solve(bench, 1.0), "quasi": _solve(bench, 1.01)}, groups)


def test_each_row_is_measured_against_its_group_s_first_row(bench: ModuleType) -> None:
    def row(group: str, label: str, seconds: tuple[float, ...]) -> object:
        return bench.Row(16, bench.Method(group, label, lambda: None), _solve(bench, 0.0), seconds)

    rows = [
        row("unconstrained", "exact", (0.1, 0.2, 0.3)),
        row("unconstrained", "quasi", (0.5, 0.6, 0.4)),
        row("batched", "batch", (1.0,)),
        row("batched", "loop", (25.0,)),
    ]
    ratios = bench.ratios(rows)
    assert ratios[(16, "exact")] == 1.0
    assert ratios[(16, "quasi")] == pytest.approx(0.5 / 0.2)
    assert ratios[(16, "loop")] == pytest.approx(25.0)
    table = bench.render_table(rows)
    assert "| 16 | batched | loop | 3 | 4 | 0 | 0 | 25,000.0 | 1 | 25.0× |" in table
