"""Benchmark hessd's per-example Hessians against the usual ways of computing them.

For MLPs D -> 256 -> 256 -> 1 (tanh) at a few (D, B), the same MLP in float64,
an LSTM and a small CNN, times in one process, on identical weights:

* hessd ``hs.hessian(m, x)`` (per-example blocks, XLA-compiled, default strategy choice),
  and hessd with each strategy forced (``pfor``, ``tiled``,
  ``forward_over_reverse``, ``structural``) where it applies;
* ``tf.hessians(tf.reduce_sum(model(x)), x)`` inside ``tf.function``;
* the nested-tape recipe (outer tape ``jacobian`` of the inner gradient) inside ``tf.function``;
* JAX ``jit(vmap(hessian(f)))`` and torch.func ``vmap(hessian(f))``, when installed.

Every method's first call (trace, compile and one run; reported separately) is
checked against hessd's blocks before anything is timed; a disagreement stops
the run. Methods are then called round-robin, so they share the machine's
noise, until each has its minimum number of runs and its time budget is spent.
The table gives medians and hessd's speedup, baseline median / hessd median.

Usage: ``python benchmarks/bench_hessian.py [--quick] [--markdown PATH] [--cases 16x1,64x32,mlp64:64x32,lstm:16,cnn:32,cnn16:16] [--methods hessd,jax,...]``
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench_methods import BUILDERS, HIDDEN, IMAGE, LARGE_IMAGE, LSTM_FEATURES, LSTM_STEPS, LSTM_UNITS, Method, NotExpressible, build_workload
from markdown_page import command_line, machine_description, publish, render_page

RTOL = 1e-4
"""Agreement required with hessd: |H - H_hessd| <= RTOL * (|H_hessd| + max |H_hessd|), float32."""

REFERENCE = "hessd"


@dataclass(frozen=True)
class Case:
    """One benchmarked model and size: input dimension D, batch size B, and the
    model kind (``bench_methods.KINDS``; the LSTM's and the CNN's D are fixed)."""

    dim: int
    batch: int
    kind: str = "mlp"

    @classmethod
    def parse(cls, text: str) -> Case:
        """``"64x32"`` -> Case(64, 32); ``"mlp64:64x32"`` -> the float64 MLP;
        ``"lstm:16"``, ``"cnn:32"`` -> those models at B = 16, 32."""
        kind, _, size = text.lower().rpartition(":")
        kind = kind or "mlp"
        if "x" in size:
            dim, batch = size.split("x")
            return cls(int(dim), int(batch), kind)
        return cls(build_workload(kind, 1).dim, int(size), kind)

    @property
    def label(self) -> str:
        """How the table names the model."""
        return {"mlp": "MLP", "mlp64": "MLP float64", "lstm": "LSTM", "cnn": "CNN", "cnn16": "CNN 16×16"}[self.kind]


CASES = (
    Case(16, 1),
    Case(64, 32),
    Case(256, 64),
    Case(64, 32, "mlp64"),
    Case(LSTM_STEPS * LSTM_FEATURES, 16, "lstm"),
    Case(IMAGE[0] * IMAGE[1] * IMAGE[2], 32, "cnn"),
    Case(LARGE_IMAGE[0] * LARGE_IMAGE[1] * LARGE_IMAGE[2], 16, "cnn16"),
)
TARGET_CASE, TARGET_BASELINE, TARGET_SPEEDUP = Case(64, 32), "tf.hessians", 20.0


@dataclass(frozen=True)
class Budget:
    """How long each method of a case is timed: at least ``min_runs`` calls,
    then more until ``seconds`` of calls or ``max_runs`` calls. Methods take
    turns in slices of about ``slice_seconds`` of consecutive calls, so that a
    fast method's median is not set by the first call after another library ran."""

    min_runs: int
    max_runs: int
    seconds: float
    slice_seconds: float

    def done(self, runs: Sequence[float]) -> bool:
        """Whether a method with these call times needs no more runs."""
        return len(runs) >= self.max_runs or (len(runs) >= self.min_runs and sum(runs) >= self.seconds)


FULL = Budget(min_runs=3, max_runs=1000, seconds=2.0, slice_seconds=0.2)
QUICK = Budget(min_runs=1, max_runs=3, seconds=0.2, slice_seconds=0.05)


@dataclass
class Prepared:
    """A case ready to run: its input, the methods that could be built, and
    notes on those that could not."""

    case: Case
    x: np.ndarray
    methods: list[Method]
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """The measurements of one method on one case."""

    case: Case
    method: Method
    first_call_s: float
    runs_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        """Median seconds per call after warm-up."""
        return statistics.median(self.runs_s)


class MismatchError(AssertionError):
    """A method's Hessian disagrees with hessd's."""


def prepare(case: Case, keys: Sequence[str] = tuple(BUILDERS), seed: int = 0) -> Prepared:
    """Build the case's model, its input x (B, *S), and the methods named by
    ``keys``; a method whose library is not installed, or that cannot compute
    the model, is skipped with a note."""
    workload = build_workload(case.kind, case.dim, seed=seed)
    x = np.random.default_rng(seed).standard_normal((case.batch, *workload.event_shape)).astype(workload.dtype)
    prepared = Prepared(case, x, [])
    for key in keys:
        try:
            prepared.methods.append(BUILDERS[key](workload, case.batch))
        except ImportError as err:
            prepared.skipped.append(f"{key}: skipped, {err.name or err} is not installed (`pip install -e '.[bench]'`)")
        except NotExpressible as err:
            prepared.skipped.append(f"{case.label} D={case.dim}, B={case.batch}: {key} left out: {err}")
    return prepared


def check_agreement(blocks: dict[str, np.ndarray], case: Case, rtol: float = RTOL) -> None:
    """Raise :class:`MismatchError` unless every method's per-example blocks
    match the reference's within ``rtol`` (scaled by the largest entry for atol)."""
    reference = blocks[REFERENCE]
    expected_shape = (case.batch, case.dim, case.dim)
    if reference.shape != expected_shape:
        raise MismatchError(f"{REFERENCE} returned blocks of shape {reference.shape} at {case}, expected {expected_shape}")
    atol = rtol * float(np.max(np.abs(reference)))
    for key, got in blocks.items():
        if got.shape != reference.shape:
            raise MismatchError(f"{key} blocks have shape {got.shape} at {case}, {REFERENCE}'s {reference.shape}")
        error = np.abs(got.astype(np.float64) - reference)
        allowed = atol + rtol * np.abs(reference)
        if not np.all(error <= allowed):
            worst = np.unravel_index(np.argmax(error - allowed), error.shape)
            raise MismatchError(
                f"{key} disagrees with {REFERENCE} at D={case.dim}, B={case.batch}: "
                f"max |diff| {error.max():.3g} (at {worst}: {got[worst]:.6g} vs {reference[worst]:.6g}), "
                f"rtol {rtol:g}, atol {atol:.3g}"
            )


def warm_up_and_check(prepared: Prepared, rtol: float = RTOL) -> dict[str, float]:
    """Call every method once (trace, compile and run), check the results agree
    with hessd's, and return each method's first-call seconds."""
    first_call_s: dict[str, float] = {}
    blocks: dict[str, np.ndarray] = {}
    for method in prepared.methods:
        seconds, result = _timed(method, prepared.x)
        first_call_s[method.key] = seconds
        blocks[method.key] = method.blocks(result, prepared.case.batch, prepared.case.dim)
    check_agreement(blocks, prepared.case, rtol)
    return first_call_s


def time_methods(methods: Sequence[Method], x: np.ndarray, budget: Budget) -> dict[str, list[float]]:
    """Seconds per call of every method; methods take turns, a slice of calls
    each, until every one is done."""
    runs: dict[str, list[float]] = {m.key: [] for m in methods}
    active = list(methods)
    while active:
        for method in active:
            _time_slice(method, x, budget, runs[method.key])
        active = [m for m in active if not budget.done(runs[m.key])]
    return runs


def _time_slice(method: Method, x: np.ndarray, budget: Budget, runs: list[float]) -> None:
    """Append the times of consecutive calls to ``runs`` for one slice (at least one call)."""
    start = time.perf_counter()
    while True:
        runs.append(_timed(method, x)[0])
        if budget.done(runs) or time.perf_counter() - start >= budget.slice_seconds:
            return


def run_case(case: Case, budget: Budget, keys: Sequence[str] = tuple(BUILDERS)) -> tuple[list[Row], list[str]]:
    """Check and time the methods named by ``keys`` (every available one by default) on one case: its rows and notes."""
    prepared = prepare(case, keys)
    first_call_s = warm_up_and_check(prepared)
    runs = time_methods(prepared.methods, prepared.x, budget)
    rows = [Row(case, m, first_call_s[m.key], tuple(runs[m.key])) for m in prepared.methods]
    return rows, prepared.skipped


def _timed(method: Method, x: np.ndarray) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = method.compute(x)
    return time.perf_counter() - start, result


def speedups(rows: Sequence[Row], reference_key: str = REFERENCE) -> dict[tuple[Case, str], float]:
    """Each row's median / the reference method's median, same case: hessd's
    speedup over the row's method (or, with ``reference_key="jax"``, the row's
    time as a multiple of JAX's)."""
    reference = {r.case: r.median_s for r in rows if r.method.key == reference_key}
    return {(r.case, r.method.key): r.median_s / reference[r.case] for r in rows if r.case in reference}


def render_table(rows: Sequence[Row]) -> str:
    """The results as a markdown table."""
    ratio, to_jax = speedups(rows), speedups(rows, "jax")
    lines = [
        "| model | D | B | method | first call (ms) | median (ms) | runs | hessd speedup | time / JAX's |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        speedup, jax_ratio = ratio.get((row.case, row.method.key)), to_jax.get((row.case, row.method.key))
        lines.append(
            f"| {row.case.label} | {row.case.dim} | {row.case.batch} | {row.method.label} | {_ms(row.first_call_s)} | "
            f"{_ms(row.median_s)} | {len(row.runs_s)} | {'' if speedup is None else _times(speedup)} | "
            f"{'' if jax_ratio is None else _times(jax_ratio)} |"
        )
    return "\n".join(lines)


def target_line(rows: Sequence[Row]) -> str | None:
    """Whether hessd reaches its target speedup over tf.hessians at D=64, B=32 (reported, never enforced)."""
    speedup = speedups(rows).get((TARGET_CASE, TARGET_BASELINE))
    if speedup is None:
        return None
    verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
    return (
        f"Target: hessd >= {TARGET_SPEEDUP:g}x faster than `{TARGET_BASELINE}` at D={TARGET_CASE.dim}, "
        f"B={TARGET_CASE.batch}: measured {_times(speedup)}, {verdict}."
    )


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def _times(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:.1f}×" if ratio < 100 else f"{ratio:,.0f}×"


TITLE = "Per-example input Hessians"


def render_body(rows: Sequence[Row], notes: Sequence[str]) -> list[str]:
    """The page's body: the setup, the table and the notes, as markdown lines."""
    widths = " → ".join(str(w) for w in HIDDEN)
    lines = [
        f"- models: MLP D → {widths} → 1, tanh, float32 (and the same in float64); LSTM: "
        f"{LSTM_STEPS} steps × {LSTM_FEATURES} features → LSTM({LSTM_UNITS}) → Dense(1); CNN: "
        f"{'×'.join(map(str, IMAGE))} images → Conv2D(4, 3×3, tanh) → Flatten → Dense(1); CNN 16×16: "
        f"{'×'.join(map(str, LARGE_IMAGE))} images → Conv2D(8, 3×3, tanh) → Flatten → Dense(1); "
        "the same weights for every method",
        "- first call: trace, compile and one run; median: of the runs after it, the methods taking turns "
        "in slices of calls; every call returns NumPy arrays",
        f"- every method's Hessian blocks were checked against hessd's (rtol {RTOL:g}) before timing",
        "- hessd speedup: the method's median / hessd's median (above 1× means hessd is faster); "
        "time / JAX's: the method's median / JAX's median (below 1× means faster than JAX)",
        "",
        render_table(rows),
    ]
    target = target_line(rows)
    extra = [*notes, *([target] if target else []), f"1-minute load average at end {os.getloadavg()[0]:.2f}"]
    return [*lines, "", *(f"- {note}" for note in extra)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few runs per method: a smoke test, not a measurement")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report as a page to PATH")
    parser.add_argument(
        "--cases",
        type=lambda text: tuple(Case.parse(c) for c in text.split(",")),
        default=CASES,
        metavar="DxB,...",
        help="cases to run (default: 16x1,64x32,256x64,mlp64:64x32,lstm:16,cnn:32,cnn16:16)",
    )
    parser.add_argument(
        "--methods",
        type=_method_keys,
        default=tuple(BUILDERS),
        metavar="KEY,...",
        help=f"methods to run, hessd always among them (default: all: {','.join(BUILDERS)})",
    )
    return parser.parse_args(argv)


def _method_keys(text: str) -> tuple[str, ...]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in BUILDERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown methods {', '.join(unknown)}; known: {', '.join(BUILDERS)}")
    return tuple(dict.fromkeys([REFERENCE, *keys]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report, and write it with ``--markdown``."""
    args = parse_args(argv)
    header = machine_description()
    command = command_line("bench_hessian.py", sys.argv[1:] if argv is None else argv)
    print("\n".join(header), flush=True)
    rows: list[Row] = []
    notes: list[str] = []
    for case in args.cases:
        print(f"{case.label} D={case.dim}, B={case.batch} ...", flush=True)
        try:
            case_rows, case_notes = run_case(case, QUICK if args.quick else FULL, args.methods)
        except MismatchError as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        rows += case_rows
        notes += case_notes
    page = render_page(TITLE, header, command, render_body(rows, list(dict.fromkeys(notes))))
    publish(page, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
