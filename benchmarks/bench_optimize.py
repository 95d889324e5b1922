"""Benchmark ``hessd.optimize``: solvers over a served surrogate with exact Hessians.

The surrogate is an MLP of D inputs (two tanh layers of 64) with 3 outputs, each a learned
term plus 0.5·|x|² so that minima exist; output 0 is the objective and output 1 a
constraint y_1(x) <= 0. It is served by a ``hessd-server`` child process (unix socket),
and every solver starts from the same points. Per D, in one run:

* **unconstrained**: scipy ``trust-exact`` with hessd's exact Hessians over the wire,
  against scipy's quasi-Newton ``BFGS`` on the same ``Objective`` callbacks, and against
  ``trust-exact`` in-process (``hessd_server``);
* **constrained**: scipy ``trust-constr`` (bounds [-1, 1], y_1 <= 0) with exact
  Hessians and Lagrangian Hessians over the wire, against ``trust-constr`` with scipy's
  quasi-Newton ``BFGS()`` Hessian approximations on the same callbacks, and in-process;
* **batched**: ``minimize_batch`` on B problems (B random starts in [-2, 2]^D), over the
  wire and in-process, against a Python loop of B scipy ``trust-exact`` solves from the
  same starts over the wire.

Methods take turns, repeat after repeat, so that the shared machine's noise falls on all
alike; the table gives medians and each row's time as a multiple of its group's exact
over-the-wire row (the batch row's multiple is the loop's time over ``minimize_batch``'s).
Before timing, every method's solution is checked: converged, and the exact and
quasi-Newton solutions at the same objective value (1e-6 relative).

Usage: ``python benchmarks/bench_optimize.py [--quick] [--markdown PATH] [--dims 16,64] [--batch 256]``
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
# scipy's trust-constr factorises many small dense matrices, and a multithreaded OpenBLAS
# hands each of their small BLAS calls to its thread pool: at D=64 on two busy cores one
# solve took 22 s instead of 0.8 s single-threaded. The solvers' process therefore runs
# OpenBLAS on one thread unless told otherwise (set before numpy loads it; the server
# child inherits it, and TensorFlow does not use OpenBLAS).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from scipy import optimize

import hessd
import hessd_server as hs
from hessd.optimize import Constraint, Objective, minimize_batch
from hessd_server.serving.server_process import ServerProcess
from markdown_page import command_line, machine_description, publish, render_page

TITLE = "Optimizers over a served surrogate"
HIDDEN = 64
OUTPUTS = 3
OBJECTIVE_WEIGHTS = (1.0, 0.0, 0.0)
BOX = 1.0
START_BOX = 2.0
TARGET_BATCH_SPEEDUP = 20.0
GRADIENT_TOLERANCE = 1e-6
"""An unconstrained solve counts as converged when its gradient is this small in every component."""
SERVER_START_S = 600.0
"""A loaded, shared machine can take minutes to import TensorFlow and warm the server up."""


def surrogate_model(dim: int, seed: int = 0) -> keras.Model:
    """MLP D -> 64 -> 64 (tanh) -> 3, plus 0.5·|x|² on every output."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((dim,), name="x")
    h = keras.layers.Dense(HIDDEN, activation="tanh")(x)
    h = keras.layers.Dense(HIDDEN, activation="tanh")(h)
    learned = keras.layers.Dense(OUTPUTS)(h)
    squares = keras.layers.Multiply()([x, x])
    growth = keras.layers.Dense(
        OUTPUTS, use_bias=False, trainable=False, kernel_initializer=keras.initializers.Constant(0.5)
    )(squares)
    return keras.Model(x, keras.layers.Add()([learned, growth]), name="surrogate")


@dataclass(frozen=True)
class Solve:
    """One solver run's outcome: what it found and what it cost."""

    x: np.ndarray
    fun: float
    iterations: int
    calls: Counter[str]
    success: bool


@dataclass(frozen=True)
class Method:
    """A named way to solve a group's problem; ``run`` solves it once from scratch."""

    group: str
    label: str
    run: Callable[[], Solve]


@dataclass(frozen=True)
class Row:
    """A method's measurements at one D."""

    dim: int
    method: Method
    solve: Solve
    seconds: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def _scipy_solve(objective: Objective, result: Any, success: bool) -> Solve:
    return Solve(result.x, float(result.fun), int(result.nit), Counter(objective.calls), success)


def unconstrained(source: Any, model: str | None, start: np.ndarray, *, exact: bool) -> Solve:
    """min y_0 from ``start``: trust-exact with exact Hessians, or BFGS on the same callbacks."""
    objective = Objective(source, model, output_weights=OBJECTIVE_WEIGHTS)
    if exact:
        result = optimize.minimize(
            objective.fun, start, jac=objective.jac, hess=objective.hess, method="trust-exact", options={"gtol": 1e-8}
        )
    else:
        result = optimize.minimize(objective.fun, start, jac=objective.jac, method="BFGS", options={"gtol": 1e-8})
    # Both may stop on rounding short of gtol (status 2); a small gradient is what counts.
    stationary = float(np.max(np.abs(objective.jac(result.x)))) <= GRADIENT_TOLERANCE
    return _scipy_solve(objective, result, stationary)


def constrained(source: Any, model: str | None, start: np.ndarray, *, exact: bool) -> Solve:
    """min y_0 s.t. y_1 <= 0, |x_i| <= 1: trust-constr with exact Hessians, or with BFGS() approximations."""
    objective = Objective(source, model, output_weights=OBJECTIVE_WEIGHTS)
    constraint = Constraint(source, model, outputs=[1], ub=0.0)
    nonlinear = constraint.scipy()
    if not exact:
        nonlinear = optimize.NonlinearConstraint(constraint.fun, -np.inf, 0.0, jac=constraint.jac, hess=optimize.BFGS())
    result = optimize.minimize(
        objective.fun,
        start,
        jac=objective.jac,
        hess=objective.hess if exact else optimize.BFGS(),
        method="trust-constr",
        constraints=[nonlinear],
        bounds=optimize.Bounds(-BOX, BOX),
        options={"gtol": 1e-8, "xtol": 1e-10, "maxiter": 2000},
    )
    calls = Counter(objective.calls) + constraint.calls
    return Solve(result.x, float(result.fun), int(result.nit), calls, bool(result.status in (1, 2)))


def batch(source: Any, model: str | None, starts: np.ndarray) -> Solve:
    """``minimize_batch`` of y_0 from every start."""
    result = minimize_batch(source, model, x0=starts, output_weights=OBJECTIVE_WEIGHTS, gtol=1e-8)
    return Solve(result.x, float(np.sum(result.fun)), int(result.iterations.max()), Counter(result.calls), result.success)


def scipy_loop(client: hessd.Client, starts: np.ndarray) -> Solve:
    """One scipy ``trust-exact`` solve (exact Hessians over the wire) per start, one after another."""
    calls: Counter[str] = Counter()
    xs, funs, iterations, success = [], [], 0, True
    for start in starts:
        solve = unconstrained(client, "surrogate", start, exact=True)
        calls += solve.calls
        xs.append(solve.x)
        funs.append(solve.fun)
        iterations += solve.iterations
        success &= solve.success
    return Solve(np.array(xs), float(np.sum(funs)), iterations, calls, success)


def methods(dim: int, batch_size: int, client: hessd.Client, in_process: Any) -> list[Method]:
    """Every method of one D, on the same starting points."""
    rng = np.random.default_rng(dim)
    start = rng.uniform(-0.5, 0.5, dim)
    starts = rng.uniform(-START_BOX, START_BOX, (batch_size, dim))
    return [
        Method("unconstrained", "trust-exact, exact Hessians, wire", lambda: unconstrained(client, "surrogate", start, exact=True)),
        Method("unconstrained", "BFGS (quasi-Newton), wire", lambda: unconstrained(client, "surrogate", start, exact=False)),
        Method("unconstrained", "trust-exact, exact Hessians, in-process", lambda: unconstrained(in_process, None, start, exact=True)),
        Method("constrained", "trust-constr, exact Hessians, wire", lambda: constrained(client, "surrogate", start, exact=True)),
        Method("constrained", "trust-constr, BFGS() Hessians, wire", lambda: constrained(client, "surrogate", start, exact=False)),
        Method("constrained", "trust-constr, exact Hessians, in-process", lambda: constrained(in_process, None, start, exact=True)),
        Method("batched", f"minimize_batch, B={batch_size}, wire", lambda: batch(client, "surrogate", starts)),
        Method("batched", f"minimize_batch, B={batch_size}, in-process", lambda: batch(in_process, None, starts)),
        Method("batched", f"loop of {batch_size} scipy trust-exact solves, wire", lambda: scipy_loop(client, starts)),
    ]


class CheckError(AssertionError):
    """A method did not solve its problem, or solved it to another value."""


def check(dim: int, solves: dict[str, Solve], group_of: dict[str, str]) -> None:
    """Every solve succeeded, and the methods of a scipy group agree on the optimum's value."""
    for label, solve in solves.items():
        if not solve.success:
            raise CheckError(f"D={dim}: {label} did not converge")
    for group in ("unconstrained", "constrained"):
        values = [solve.fun for label, solve in solves.items() if group_of[label] == group]
        if values and max(values) - min(values) > 1e-6 * (1.0 + abs(min(values))):
            raise CheckError(f"D={dim}: the {group} solutions disagree: objective values {values}")


def run_dim(dim: int, batch_size: int, repeats: int, folder: Path) -> list[Row]:
    """Serve the surrogate of D inputs, check every method once, then time ``repeats`` turns."""
    path = folder / f"surrogate-{dim}.keras"
    surrogate_model(dim).save(path)
    in_process = hs.load_model(str(path))
    server = ServerProcess(
        "--model", f"surrogate={path}", "--warmup-batch-sizes", "1", "--log-level", "WARNING", startup_timeout=SERVER_START_S
    )
    with server, hessd.Client(server.target) as client:
        chosen = methods(dim, batch_size, client, in_process)
        solves = {m.label: m.run() for m in chosen}  # also compiles every batch bucket used
        check(dim, solves, {m.label: m.group for m in chosen})
        seconds: dict[str, list[float]] = {m.label: [] for m in chosen}
        for turn in range(repeats):
            for method in chosen if turn % 2 == 0 else reversed(chosen):
                began = time.perf_counter()
                method.run()
                seconds[method.label].append(time.perf_counter() - began)
    return [Row(dim, m, solves[m.label], tuple(seconds[m.label])) for m in chosen]


def ratios(rows: Sequence[Row]) -> dict[tuple[int, str], float]:
    """Each row's median over its group's first row's (for the batch group: the loop's over
    minimize_batch's, so above 1 means minimize_batch is faster)."""
    first: dict[tuple[int, str], float] = {}
    found = {}
    for row in rows:
        key = (row.dim, row.method.group)
        first.setdefault(key, row.median_s)
        found[(row.dim, row.method.label)] = row.median_s / first[key]
    return found


def render_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    multiple = ratios(rows)
    lines = [
        "| D | problem | method | iterations | Evaluate | HVP | other calls | median (ms) | runs | × exact over the wire |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        calls = row.solve.calls
        other = sum(calls.values()) - calls["Evaluate"] - calls["HessianVectorProduct"]
        lines.append(
            f"| {row.dim} | {row.method.group} | {row.method.label} | {row.solve.iterations} | {calls['Evaluate']} | "
            f"{calls['HessianVectorProduct']} | {other} | {row.median_s * 1e3:,.1f} | {len(row.seconds)} | "
            f"{_times(multiple[(row.dim, row.method.label)])} |"
        )
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> list[str]:
    """The ratios the issue asks about, per D."""
    lines = []
    for dim in sorted({r.dim for r in rows}):
        group: dict[str, list[Row]] = {}
        for row in rows:
            if row.dim == dim:
                group.setdefault(row.method.group, []).append(row)
        exact, quasi, local = group["unconstrained"]
        lines.append(
            f"D={dim}, unconstrained: BFGS took {_times(quasi.median_s / exact.median_s)} the time and "
            f"{quasi.solve.calls['Evaluate'] / max(exact.solve.calls['Evaluate'], 1):.1f}× the Evaluate calls of "
            f"trust-exact with exact Hessians over the wire; in-process took {_times(local.median_s / exact.median_s)}."
        )
        exact, quasi, local = group["constrained"]
        lines.append(
            f"D={dim}, constrained: trust-constr with BFGS() Hessians took {quasi.solve.iterations} iterations against "
            f"{exact.solve.iterations} with exact ones, {_times(quasi.median_s / exact.median_s)} the time; "
            f"in-process took {_times(local.median_s / exact.median_s)}."
        )
        batched, local, loop = group["batched"]
        speedup = loop.median_s / batched.median_s
        verdict = "met" if speedup >= TARGET_BATCH_SPEEDUP else "NOT met"
        lines.append(
            f"D={dim}, batched: minimize_batch over the wire was {_times(speedup)} faster than the loop of scipy "
            f"solves ({batched.solve.calls['Evaluate']} Evaluate calls against {loop.solve.calls['Evaluate']}); "
            f"target ≥ {TARGET_BATCH_SPEEDUP:g}×: {verdict}. In-process it was {_times(loop.median_s / local.median_s)} "
            "faster than that (wire) loop."
        )
    return lines


def _times(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.1f}×" if ratio < 100 else f"{ratio:,.0f}×"


def render_body(rows: Sequence[Row], batch_size: int, repeats: int) -> list[str]:
    """The page's body: the setup, the table and the summary, as markdown lines."""
    return [
        f"- model: MLP D → {HIDDEN} → {HIDDEN} (tanh) → {OUTPUTS}, plus 0.5·|x|² on every output, served by a "
        "`hessd-server` child over a unix socket; float64 derivatives",
        "- unconstrained: min y_0 from one start in [-0.5, 0.5]^D; constrained: the same subject to y_1 ≤ 0 and "
        f"|x_i| ≤ {BOX:g}; batched: min y_0 from {batch_size} starts in [-{START_BOX:g}, {START_BOX:g}]^D",
        f"- the solvers' process ran OpenBLAS with OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']} "
        "(see the notes below the table)",
        "- every solve was checked before timing: converged, and the unconstrained (constrained) methods at the same "
        "objective value within 1e-6 relative",
        f"- median of {repeats} solves per method, the methods taking turns (order reversed every other turn); "
        "× exact over the wire: the row's median over its group's first row's; for the batch rows, the "
        "first row is minimize_batch over the wire, so the loop's multiple is its speedup and the in-process "
        "row's is its time over the wire's",
        "- the quasi-Newton rows use the same `Objective` callbacks, so each of their points still costs one "
        "Evaluate (whose Hessian they ignore)",
        "",
        render_table(rows),
        "",
        *(f"- {line}" for line in summary(rows)),
        f"- 1-minute load average at end {os.getloadavg()[0]:.2f}; the machine is shared with other work, "
        "so only same-run ratios mean anything",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="D=16, B=32 and one timed solve each: a smoke test")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report as a page to PATH")
    parser.add_argument("--dims", type=lambda t: tuple(int(d) for d in t.split(",")), metavar="D,...", help="input sizes (default 16,64)")
    parser.add_argument("--batch", type=int, metavar="B", help="problems of the batched rows (default 256)")
    parser.add_argument("--repeats", type=int, metavar="N", help="timed solves per method (default 5)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report, and write it with ``--markdown``."""
    args = parse_args(argv)
    dims = args.dims or ((16,) if args.quick else (16, 64))
    batch_size = args.batch or (32 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 5)
    header = machine_description()
    command = command_line("bench_optimize.py", sys.argv[1:] if argv is None else argv)
    print("\n".join(header), flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-optimize-") as folder:
        for dim in dims:
            print(f"D={dim} ...", flush=True)
            try:
                rows += run_dim(dim, batch_size, repeats, Path(folder))
            except CheckError as err:
                print(f"FAILED: {err}", file=sys.stderr)
                return 1
    page = render_page(TITLE, header, command, render_body(rows, batch_size, repeats))
    publish(page, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
