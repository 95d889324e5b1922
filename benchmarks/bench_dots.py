"""The structural strategy's dominant matrix products, alone: TensorFlow's XLA
(``jit_compile=True``), TensorFlow without XLA (graph mode, TensorFlow's own
matmul kernels) and JAX, in one process, taking turns.

For the benchmark MLP D → 256 → 256 → 1 at each (D, B), the products that the
closed form (``server/hessd_server/engine/structural.py``) runs per call:

* the first layer's term: (B × n) · (n × D(D+1)/2), the weights times the
  precomputed products of W₁'s row pairs;
* the Jacobians through W₂: (B·D × n) · (n × n), as one 2-D product per row
  block of D (4 blocks from 128 features, else 1);
* the second layer's term: the batched Gram products, B × (s × n) · (n × s)
  for each pair of row blocks on and above the diagonal (s = D / blocks).

Each product is also timed with its operands laid out the other way round
(the transposed product), which XLA may lower to a different kernel. Every
product's result is checked against float64 NumPy before it is timed.

Usage: ``python benchmarks/bench_dots.py [--cases 64x32,256x64] [--dtype float32] [--markdown PATH]``
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from hessd_server.engine.structural import BLOCKED_FROM_DIM, BLOCKS

from markdown_page import command_line, machine_description, publish, render_page

HIDDEN = 256
"""n, the width of the benchmark MLP's hidden layers."""

CASES = ((64, 32), (256, 64))
"""(D, B) of the benchmark's MLP rows that the stretch and the D = 256 targets name."""

SLICE_SECONDS = 0.2
MIN_RUNS, MAX_RUNS, SECONDS = 5, 400, 1.5
TITLE = "Dot micro-benchmark: the structural strategy's products"

Products = Callable[..., object]
"""A backend's compiled function of a product's operands -> its results."""


@dataclass(frozen=True)
class Dot:
    """One of the program's products, as a set of same-shaped matrix products.

    Attributes:
        name: what it is in the closed form.
        left, right: the shapes of each product's two operands, as the program holds them.
        count: how many such products one call runs.
        batched: the operands carry a leading batch axis (B).
        transpose_b: the right operand is used transposed (a Gram product).
    """

    name: str
    left: tuple[int, ...]
    right: tuple[int, ...]
    count: int
    transpose_b: bool = False

    @property
    def flops(self) -> float:
        """Multiply-adds × 2 of one call (all ``count`` products)."""
        *batch, rows, inner = self.left
        cols = self.right[-2] if self.transpose_b else self.right[-1]
        return 2.0 * self.count * float(np.prod(batch, dtype=np.float64)) * rows * inner * cols

    @property
    def shape_text(self) -> str:
        *batch, rows, inner = self.left
        cols = self.right[-2] if self.transpose_b else self.right[-1]
        lead = f"{batch[0]} × " if batch else ""
        times = f"{self.count} × " if self.count > 1 else ""
        return f"{times}{lead}({rows} × {inner}) · ({inner} × {cols})"


def dots_of(dim: int, batch: int) -> list[Dot]:
    """The structural program's large products at input size ``dim`` and batch ``batch``."""
    blocks = BLOCKS if dim >= BLOCKED_FROM_DIM else 1
    rows = dim // blocks
    return [
        Dot("first layer's term (row-pair products)", (batch, HIDDEN), (HIDDEN, dim * (dim + 1) // 2), 1),
        Dot("Jacobians through W₂", (batch * rows, HIDDEN), (HIDDEN, HIDDEN), blocks),
        Dot("second layer's term (Gram products)", (batch, rows, HIDDEN), (batch, rows, HIDDEN), blocks * (blocks + 1) // 2, True),
    ]


def _operands(dot: Dot, dtype: str, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (rng.standard_normal(dot.left).astype(dtype), rng.standard_normal(dot.right).astype(dtype))
        for _ in range(dot.count)
    ]


def _swapped(pairs: list[tuple[np.ndarray, np.ndarray]], dot: Dot) -> list[tuple[np.ndarray, np.ndarray]]:
    """The same products laid out the other way round: (Bᵀ, Aᵀ) for A · B, and for a
    Gram product A · Bᵀ the operands as (n × s) columns."""
    if dot.transpose_b:
        return [(np.ascontiguousarray(np.swapaxes(a, -1, -2)), np.ascontiguousarray(np.swapaxes(b, -1, -2))) for a, b in pairs]
    return [(np.ascontiguousarray(b.T), np.ascontiguousarray(a.T)) for a, b in pairs]


def _expected(pairs: list[tuple[np.ndarray, np.ndarray]], dot: Dot, swapped: bool) -> list[np.ndarray]:
    if dot.transpose_b:
        if swapped:
            return [np.swapaxes(a, -1, -2).astype(np.float64) @ b.astype(np.float64) for a, b in pairs]
        return [a.astype(np.float64) @ np.swapaxes(b, -1, -2).astype(np.float64) for a, b in pairs]
    return [a.astype(np.float64) @ b.astype(np.float64) for a, b in pairs]


def _tf_products(dot: Dot, swapped: bool, jit: bool) -> Products:
    transpose_a, transpose_b = (True, False) if dot.transpose_b and swapped else (False, dot.transpose_b)

    def products(*operands: tf.Tensor) -> list[tf.Tensor]:
        return [
            tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
            for a, b in zip(operands[::2], operands[1::2])
        ]

    compiled = tf.function(products, jit_compile=jit, autograph=False)
    return lambda *operands: [t.numpy() for t in compiled(*operands)]


def _jax_products(dot: Dot, swapped: bool) -> Products:
    import jax
    import jax.numpy as jnp

    def one(a: jax.Array, b: jax.Array) -> jax.Array:
        if dot.transpose_b:
            return jnp.swapaxes(a, -1, -2) @ b if swapped else a @ jnp.swapaxes(b, -1, -2)
        return a @ b

    compiled = jax.jit(lambda *operands: [one(a, b) for a, b in zip(operands[::2], operands[1::2])])
    return lambda *operands: [np.asarray(t) for t in compiled(*operands)]


BACKENDS: dict[str, Callable[[Dot, bool], Products]] = {
    "TF XLA": lambda dot, swapped: _tf_products(dot, swapped, jit=True),
    "TF graph": lambda dot, swapped: _tf_products(dot, swapped, jit=False),
    "JAX": _jax_products,
}


@dataclass(frozen=True)
class Row:
    dim: int
    batch: int
    dot: Dot
    swapped: bool
    medians_s: dict[str, float]


def measure(dim: int, batch: int, dot: Dot, swapped: bool, dtype: str) -> Row:
    """Check each backend's products against float64 NumPy, then time them taking turns."""
    pairs = _operands(dot, dtype, np.random.default_rng(0))
    if swapped:
        pairs = _swapped(pairs, dot)
    flat = [array for pair in pairs for array in pair]
    expected = _expected(pairs, dot, swapped)
    tolerance = 1e-4 if dtype == "float32" else 1e-10
    compiled = {name: build(dot, swapped) for name, build in BACKENDS.items()}
    for name, products in compiled.items():
        for got, want in zip(products(*flat), expected):
            scale = np.max(np.abs(want))
            if not np.allclose(got, want, rtol=tolerance, atol=tolerance * scale):
                raise AssertionError(f"{name} computes {dot.name} wrongly at D={dim}, B={batch}")
    runs: dict[str, list[float]] = {name: [] for name in compiled}

    def done(times: list[float]) -> bool:
        return len(times) >= MAX_RUNS or (len(times) >= MIN_RUNS and sum(times) >= SECONDS)

    while not all(done(times) for times in runs.values()):
        for name, products in compiled.items():
            began = time.perf_counter()
            while not done(runs[name]) and time.perf_counter() - began < SLICE_SECONDS:
                start = time.perf_counter()
                products(*flat)
                runs[name].append(time.perf_counter() - start)
    return Row(dim, batch, dot, swapped, {name: statistics.median(times) for name, times in runs.items()})


def render_table(rows: Sequence[Row]) -> list[str]:
    names = list(BACKENDS)
    against_jax = [n for n in names if n != "JAX"] if "JAX" in names else []
    lines = [
        "| D | B | product | operands | GFLOP | "
        + " | ".join([f"{n} (ms)" for n in names] + [f"{n} / JAX" for n in against_jax])
        + " |",
        "|---:|---:|---|---|---:|" + "---:|" * (len(names) + len(against_jax)),
    ]
    for row in rows:
        times = row.medians_s
        layout = " (transposed)" if row.swapped else ""
        cells = [f"{times[n] * 1e3:.2f}" for n in names] + [f"{times[n] / times['JAX']:.2f}×" for n in against_jax]
        lines.append(
            f"| {row.dim} | {row.batch} | {row.dot.name}{layout} | {row.dot.shape_text} | {row.dot.flops / 1e9:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        type=lambda text: tuple(tuple(int(v) for v in c.split("x")) for c in text.split(",")),
        default=CASES,
        metavar="DxB,...",
        help="(D, B) pairs (default: 64x32,256x64)",
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report as a page to PATH")
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    header = machine_description()
    print("\n".join(header), flush=True)
    rows = []
    for dim, batch in args.cases:
        for dot in dots_of(dim, batch):
            for swapped in (False, True):
                rows.append(measure(dim, batch, dot, swapped, args.dtype))
                print(render_table(rows[-1:])[-1], flush=True)
    body = [
        f"- {args.dtype}; n = {HIDDEN}; medians of at least {MIN_RUNS} calls each, the backends taking turns "
        f"in slices of {SLICE_SECONDS:g} s; every call returns NumPy arrays",
        "- TF graph: the same `tf.function` without `jit_compile`, so TensorFlow's own matmul kernels run",
        "",
        *render_table(rows),
        "",
        f"- 1-minute load average at end {os.getloadavg()[0]:.2f}",
    ]
    page = render_page(TITLE, header, command_line("bench_dots.py", sys.argv[1:] if argv is None else argv), body)
    publish(page, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
