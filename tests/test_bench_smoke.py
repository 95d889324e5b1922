"""Smoke test of benchmarks/bench_hessian.py: its correctness check on the
smallest case, hessd against tf.hessians only, and the page it writes with
``--markdown`` (benchmarks/markdown_page.py). Nothing here is timed."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from support.benchmark_modules import import_benchmark

@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark module, imported as ``python benchmarks/bench_hessian.py`` would see it."""
    return import_benchmark("bench_hessian")


@pytest.fixture(scope="module")
def markdown_page(bench: ModuleType) -> ModuleType:
    """The page helper the benchmarks share (imported beside ``bench_hessian``)."""
    return sys.modules["markdown_page"]


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


def test_markdown_writes_the_page_and_keeps_its_hand_written_part(
    bench: ModuleType, markdown_page: ModuleType, tmp_path: Path
) -> None:
    page = tmp_path / "hessian.md"
    argv = ["--quick", "--cases", "16x1", "--methods", "hessd", "--markdown", str(page)]
    assert bench.main(argv) == 0
    written = page.read_text()
    lines = written.splitlines()
    assert lines[0] == f"# {bench.TITLE}"
    assert any(line.startswith("- date: ") and line.endswith(" UTC") for line in lines)
    assert any(line.startswith("- CPU: ") and "logical cores" in line and "RAM" in line for line in lines)
    assert any(line.startswith("- OS: ") and "Python" in line for line in lines)
    assert any(line.startswith("- libraries: tensorflow ") and "jax " in line for line in lines)
    assert f"- command: `python benchmarks/bench_hessian.py {' '.join(argv)}`" in lines
    assert any(line.startswith("| MLP | 16 | 1 | hessd") for line in lines)
    assert lines[-1] == markdown_page.HAND_WRITTEN_MARKER

    interpretation = "## Reading the table\n\nhessd's fixed cost decides at B=1.\n"
    page.write_text(written + interpretation)
    assert bench.main(argv) == 0
    rewritten = page.read_text()
    assert rewritten.endswith(f"{markdown_page.HAND_WRITTEN_MARKER}\n\n{interpretation}")
    assert rewritten.count(markdown_page.HAND_WRITTEN_MARKER) == 1
    assert rewritten.startswith(f"# {bench.TITLE}\n")


def test_write_page_replaces_only_the_generated_part(markdown_page: ModuleType, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    command = "python benchmarks/x.py"
    first = markdown_page.render_page("T", ["- date: then"], command, ["| a |", "|---|", "| 1 |"])
    markdown_page.write_page(page, first)
    page.write_text(page.read_text() + "Hand-written.\n")
    second = markdown_page.render_page("T", ["- date: now"], command, ["| a |", "|---|", "| 2 |"])
    markdown_page.write_page(page, second)
    text = page.read_text()
    assert "| 2 |" in text and "| 1 |" not in text and "- date: then" not in text
    assert text.endswith(f"{markdown_page.HAND_WRITTEN_MARKER}\n\nHand-written.\n")
    assert markdown_page.hand_written_part("no marker here") == ""
