"""Smoke test of benchmarks/bench_hessian.py: its correctness check on the
smallest case, hessd against tf.hessians only. Nothing here is timed."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark module, imported as ``python benchmarks/bench_hessian.py`` would see it."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_hessian
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_hessian


def test_hessd_agrees_with_tf_hessians_on_smallest_case(bench: ModuleType) -> None:
    prepared = bench.prepare(bench.CASES[0], keys=("hessd", "tf.hessians"))
    first_calls = bench.warm_up_and_check(prepared)
    assert set(first_calls) == {"hessd", "tf.hessians"}


def test_disagreement_fails_loudly(bench: ModuleType) -> None:
    case = bench.Case(dim=3, batch=2)
    reference = np.random.default_rng(0).standard_normal((2, 3, 3))
    wrong = reference.copy()
    wrong[1, 2, 0] += 1e-2
    bench.check_agreement({"hessd": reference, "close": reference * (1 + 1e-6)}, case)
    with pytest.raises(bench.MismatchError, match="wrong disagrees"):
        bench.check_agreement({"hessd": reference, "wrong": wrong}, case)


def test_methods_flag_keeps_hessd_and_refuses_unknown_keys(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.parse_args(["--methods", "jax,hessd:structural"]).methods == ("hessd", "jax", "hessd:structural")
    assert bench.parse_args([]).methods == tuple(bench.BUILDERS)
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "jax,numpy"])
    assert "unknown methods numpy" in capsys.readouterr().err
