"""Benchmark hessd's curvature summaries against the dense path.

For the MLPs D -> 256 -> 256 -> 1 (tanh) at D = 1,024 and 4,096 and a small
CNN on 64×64×3 images (D = 12,288), B = 1, times in one process:

* the dense path: hessd's per-example Hessian ``hs.hessian`` and numpy's
  ``trace`` / ``diag`` / ``eigh`` (MLPs only: a 12,288² block is 600 MB);
* JAX dense: ``jit(hessian)`` and ``jnp.trace`` / ``jnp.linalg.eigh`` on the same weights (MLPs, when installed);
* hessd ``hessian_trace``, ``hessian_diagonal``, ``hessian_eigen`` (k = 5) and
  ``hessian_spectrum`` with each of their methods.

Errors are measured against a float64 reference: the dense float64 Hessian
(MLPs), or for the CNN the exact diagonal from products with unit vectors and
eigenvalues from a float64 Lanczos run of 256 steps. Trace errors are relative
to the nuclear norm sum |λ|, diagonal errors relative to ‖diag H‖, eigenvalue
errors are the largest |λ_i − λ_i*| / |λ_1*| over the top five.

Usage: ``python benchmarks/bench_curvature.py [--quick] [--markdown PATH] [--cases mlp1024,mlp4096,cnn]``
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

import keras
import numpy as np

import hessd_server as hs
from bench_hessian import FULL, QUICK, Budget
from bench_methods import HIDDEN, build_mlp
from markdown_page import command_line, machine_description, publish, render_page

TOP_K = 5
PROBES = 64
SPECTRUM_PROBES, SPECTRUM_STEPS = 8, 32
TARGET_CASE, TARGET_SPEEDUP, TARGET_RTOL = "mlp4096", 10.0, 1e-4
REFERENCE_LANCZOS_STEPS = 256


def build_cnn(seed: int = 0) -> keras.Model:
    """64×64×3 -> Conv2D(8, 3, stride 2, softplus) -> Conv2D(8, 3, stride 2, tanh) -> Dense(1)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            keras.layers.Conv2D(8, 3, strides=2, activation="softplus"),
            keras.layers.Conv2D(8, 3, strides=2, activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ],
        name="cnn",
    )


@dataclass(frozen=True)
class Case:
    """One benchmarked model: its key, label, input size and whether the dense path runs."""

    key: str
    label: str
    dim: int
    dense: bool
    build: Callable[[], keras.Model]


CASES = {
    "mlp1024": Case("mlp1024", "MLP", 1024, True, lambda: build_mlp(1024)),
    "mlp4096": Case("mlp4096", "MLP", 4096, True, lambda: build_mlp(4096)),
    "cnn": Case("cnn", "CNN 64×64×3", 12288, False, build_cnn),
}


@dataclass(frozen=True)
class Reference:
    """Float64 truth of one case: trace, diagonal, top eigenvalues and the nuclear norm."""

    trace: float
    diagonal: np.ndarray
    top: np.ndarray
    nuclear: float


@dataclass(frozen=True)
class Method:
    """One way to compute one quantity: label, a call returning (value, top eigenvalues or None)."""

    quantity: str
    label: str
    compute: Callable[[], object]
    error: Callable[[object], float | None]
    dense: bool = False


@dataclass(frozen=True)
class Row:
    case: Case
    method: Method
    first_call_s: float
    runs_s: tuple[float, ...]
    error: float | None

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


def reference(case: Case, m: hs.Model, x: np.ndarray) -> Reference:
    """The float64 truth: dense (MLPs) or unit vectors and a long Lanczos run (CNN)."""
    if case.dense:
        block = hs.hessian(m, x, precision="float64")[0].reshape(case.dim, case.dim)
        values = np.linalg.eigvalsh(block)
        top = values[::-1][:TOP_K]
        return Reference(float(np.trace(block)), np.diag(block).copy(), top, float(np.abs(values).sum()))
    diagonal = hs.hessian_diagonal(m, x, method="exact", precision="float64").diagonal.reshape(-1)
    eigen = hs.hessian_eigen(
        m, x, k=TOP_K, method="lanczos", iterations=REFERENCE_LANCZOS_STEPS, tol=0.0, precision="float64", seed=0
    )
    spectrum = hs.hessian_spectrum(m, x, probes=SPECTRUM_PROBES, iterations=SPECTRUM_STEPS, precision="float64", seed=1)
    nuclear = float((spectrum.weights * np.abs(spectrum.nodes)).sum() * case.dim)
    return Reference(float(diagonal.sum()), diagonal, eigen.eigenvalues[0], nuclear)


def methods(case: Case, m: hs.Model, model: keras.Model, x: np.ndarray, ref: Reference) -> list[Method]:
    """Every method of ``case``, dense ones first within each quantity."""

    def trace_error(value: object) -> float:
        return abs(float(np.asarray(value).reshape(-1)[0]) - ref.trace) / ref.nuclear

    def diagonal_error(value: object) -> float:
        return float(np.linalg.norm(np.asarray(value).reshape(-1) - ref.diagonal) / np.linalg.norm(ref.diagonal))

    def eigen_error(value: object) -> float:
        return float(np.max(np.abs(np.asarray(value).reshape(-1)[:TOP_K] - ref.top)) / abs(ref.top[0]))

    def spectrum_error(value: object) -> float:
        nodes, weights = value  # type: ignore[misc]
        return abs(float((weights * nodes).sum()) * case.dim - ref.trace) / ref.nuclear

    def dense_block() -> np.ndarray:
        return hs.hessian(m, x)[0].reshape(case.dim, case.dim)

    found: list[Method] = []
    if case.dense:
        found += [
            Method("trace", "dense: `hs.hessian` + `np.trace`", lambda: np.trace(dense_block()), trace_error, True),
            Method("diagonal", "dense: `hs.hessian` + `np.diag`", lambda: np.diag(dense_block()), diagonal_error, True),
            Method(
                f"top-{TOP_K} eigenvalues",
                "dense: `hs.hessian` + `np.linalg.eigh`",
                lambda: np.linalg.eigh(dense_block())[0][::-1],
                eigen_error,
                True,
            ),
        ]
        found += _jax_methods(model, x, trace_error, diagonal_error, eigen_error)
    exact_trace = "exact (blocks)" if case.dense else "exact (unit vectors)"
    found += [
        Method("trace", f"`hessian_trace` {exact_trace}", lambda: hs.hessian_trace(m, x, method="exact").trace, trace_error),
        Method(
            "trace",
            f"`hessian_trace` hutchinson, {PROBES} probes",
            lambda: hs.hessian_trace(m, x, method="hutchinson", probes=PROBES, seed=0).trace,
            trace_error,
        ),
        Method(
            "trace",
            f"`hessian_trace` hutch++, {PROBES} probes",
            lambda: hs.hessian_trace(m, x, method="hutch++", probes=PROBES, seed=0).trace,
            trace_error,
        ),
        Method(
            "diagonal",
            f"`hessian_diagonal` hutchinson, {PROBES} probes",
            lambda: hs.hessian_diagonal(m, x, method="hutchinson", probes=PROBES, seed=0).diagonal,
            diagonal_error,
        ),
    ]
    if case.dense:
        found += [
            Method(
                "diagonal", "`hessian_diagonal` exact (blocks)",
                lambda: hs.hessian_diagonal(m, x, method="exact").diagonal, diagonal_error,
            ),
            Method(
                f"top-{TOP_K} eigenvalues", "`hessian_eigen` exact (blocks, `eigh` in graph)",
                lambda: hs.hessian_eigen(m, x, k=TOP_K, method="exact").eigenvalues, eigen_error, True,
            ),
        ]
    found += [
        Method(
            f"top-{TOP_K} eigenvalues",
            "`hessian_eigen` lanczos (defaults)",
            lambda: hs.hessian_eigen(m, x, k=TOP_K, method="lanczos", seed=0).eigenvalues,
            eigen_error,
        ),
        Method(
            "spectrum (first moment)",
            f"`hessian_spectrum` SLQ, {SPECTRUM_PROBES} probes × {SPECTRUM_STEPS} steps",
            lambda: tuple(hs.hessian_spectrum(m, x, probes=SPECTRUM_PROBES, iterations=SPECTRUM_STEPS, seed=0)),
            spectrum_error,
        ),
    ]
    return found


def _jax_methods(
    model: keras.Model,
    x: np.ndarray,
    trace_error: Callable[[object], float],
    diagonal_error: Callable[[object], float],
    eigen_error: Callable[[object], float],
) -> list[Method]:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return []
    weights = [np.asarray(w, dtype=np.float32) for w in model.get_weights()]
    params = [(jnp.asarray(kernel), jnp.asarray(bias)) for kernel, bias in zip(weights[::2], weights[1::2])]

    def mlp(point: jax.Array) -> jax.Array:
        for kernel, bias in params[:-1]:
            point = jnp.tanh(point @ kernel + bias)
        kernel, bias = params[-1]
        return jnp.sum(point @ kernel + bias)

    hessian = jax.hessian(mlp)
    trace = jax.jit(lambda p: jnp.trace(hessian(p)))
    diagonal = jax.jit(lambda p: jnp.diag(hessian(p)))
    eigenvalues = jax.jit(lambda p: jnp.linalg.eigh(hessian(p))[0][::-1])
    point = jnp.asarray(x[0])
    return [
        Method("trace", "JAX dense: `jit(trace(hessian))`", lambda: np.asarray(trace(point)), trace_error, True),
        Method("diagonal", "JAX dense: `jit(diag(hessian))`", lambda: np.asarray(diagonal(point)), diagonal_error, True),
        Method(
            f"top-{TOP_K} eigenvalues",
            "JAX dense: `jit(eigh(hessian))`",
            lambda: np.asarray(eigenvalues(point)),
            eigen_error,
            True,
        ),
    ]


def run_case(case: Case, budget: Budget) -> list[Row]:
    """Reference, then every method: first call, then timed runs (round-robin), then its error."""
    model = case.build()
    m = hs.load_model(model)
    shape = (1, *model.input_shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ref = reference(case, m, x)
    found = methods(case, m, model, x, ref)
    first: dict[str, tuple[float, object]] = {}
    for method in found:
        start = time.perf_counter()
        value = method.compute()
        first[method.label + method.quantity] = (time.perf_counter() - start, value)
    runs: dict[str, list[float]] = {method.label + method.quantity: [] for method in found}
    active = list(found)
    while active:
        for method in active:
            start = time.perf_counter()
            method.compute()
            runs[method.label + method.quantity].append(time.perf_counter() - start)
        active = [method for method in active if not budget.done(runs[method.label + method.quantity])]
    return [
        Row(case, method, first[key][0], tuple(runs[key]), method.error(first[key][1]))
        for method in found
        for key in [method.label + method.quantity]
    ]


def speedup_over_dense(rows: Sequence[Row], row: Row) -> float | None:
    """The hessd-dense median of the same case and quantity over this row's median."""
    dense = [r for r in rows if r.case == row.case and r.method.quantity == row.method.quantity and r.method.label.startswith("dense")]
    return dense[0].median_s / row.median_s if dense else None


def render_table(rows: Sequence[Row]) -> str:
    lines = [
        "| input | D | quantity | method | first call (ms) | median (ms) | runs | error | speedup vs dense |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        speedup = speedup_over_dense(rows, row)
        error = "" if row.error is None else f"{row.error:.1e}"
        lines.append(
            f"| {row.case.label} | {row.case.dim:,} | {row.method.quantity} | {row.method.label} | "
            f"{_ms(row.first_call_s)} | {_ms(row.median_s)} | {len(row.runs_s)} | {error} | "
            f"{'' if speedup is None else f'{speedup:,.1f}×'} |"
        )
    return "\n".join(lines)


def target_line(rows: Sequence[Row]) -> str | None:
    """Whether Lanczos's top-5 at D=4096 is >= 10x faster than the fastest dense
    path (Hessian + eigh: numpy, in-graph or JAX) with the eigenvalues within rtol 1e-4."""
    eigen = [r for r in rows if r.case.key == TARGET_CASE and r.method.quantity.startswith("top-")]
    lanczos = [r for r in eigen if "lanczos" in r.method.label]
    dense = [r for r in eigen if r.method.dense]
    if not lanczos or not dense:
        return None
    fastest = min(dense, key=lambda r: r.median_s)
    speedup = fastest.median_s / lanczos[0].median_s
    error = lanczos[0].error or 0.0
    met = speedup >= TARGET_SPEEDUP and error <= TARGET_RTOL
    return (
        f"Target: top-{TOP_K} eigenvalues by Lanczos at D=4,096 >= {TARGET_SPEEDUP:g}× faster than dense + `eigh`, "
        f"largest eigenvalue within rtol {TARGET_RTOL:g}: {speedup:,.1f}× faster than the fastest dense path "
        f"({fastest.method.label}), top-{TOP_K} eigenvalue error {error:.1e} (which bounds the largest's), "
        f"{'met' if met else 'NOT met'}."
    )


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


TITLE = "Curvature without the matrix"


def render_body(rows: Sequence[Row]) -> list[str]:
    """The page's body: the setup, the table and the target, as markdown lines."""
    widths = " → ".join(str(w) for w in HIDDEN)
    lines = [
        f"- models: MLP D → {widths} → 1 (tanh); CNN 64×64×3 → Conv2D(8, 3, /2, softplus) → Conv2D(8, 3, /2, tanh) → Dense(1); "
        "float32, B = 1",
        "- error: trace |t − tr H| / Σ|λ|; diagonal ‖d − diag H‖ / ‖diag H‖; eigenvalues max_i |λ_i − λ_i*| / |λ_1*| "
        f"over the top {TOP_K}; spectrum |Σ w·θ · D − tr H| / Σ|λ|. Truth in float64: the dense Hessian (MLPs), "
        f"unit-vector products and a {REFERENCE_LANCZOS_STEPS}-step Lanczos run (CNN)",
        "- speedup vs dense: the dense path's median (`hs.hessian` + numpy) over the method's, same quantity",
        "",
        render_table(rows),
    ]
    target = target_line(rows)
    extra = [*([target] if target else []), f"1-minute load average at end {os.getloadavg()[0]:.2f}"]
    return [*lines, "", *(f"- {note}" for note in extra)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few runs per method: a smoke test, not a measurement")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report as a page to PATH")
    parser.add_argument("--cases", default=",".join(CASES), help="cases to run (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    header = machine_description()
    command = command_line("bench_curvature.py", sys.argv[1:] if argv is None else argv)
    print("\n".join(header), flush=True)
    rows: list[Row] = []
    for key in args.cases.split(","):
        print(f"{key} ...", flush=True)
        rows += run_case(CASES[key], QUICK if args.quick else FULL)
    page = render_page(TITLE, header, command, render_body(rows))
    publish(page, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
