"""Soak test of a real ``hessd-server``: many concurrent clients calling mixed methods
for a bounded time, every result checked against the library in-process.

    python benchmarks/soak.py                      # 64 clients for 60 s
    python benchmarks/soak.py --clients 8 --seconds 10

The server runs as a child process on a unix socket, serving the demo model and
a small MLP, warmed for the batch sizes used. Each client is a
``hessd.AsyncClient`` on its own channel, calling in a loop: Hessian, gradient,
HVP, evaluate, a three-batch StreamHessian, model metadata, and a request with
a wrong shape (which must fail with ``ShapeError``). Every result is compared
with ``hessd_server`` on the same model in this process. The run prints a
table of calls, throughput and latency per method, then the totals; it exits
1 if any result was wrong, any call failed unexpectedly, a compile happened
during the run, or the server did not drain cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import hessd
import hessd_server as hs
from hessd_server.serving.server_process import ServerProcess

BATCH_SIZES = (1, 2, 3, 4, 8)
INPUTS_PER_MODEL = 8
CALL_TIMEOUT_S = 60.0
RTOL, ATOL = 1e-4, 1e-6
MLP_SIZE = 32


def small_mlp() -> keras.Model:
    """D = 32 -> 64 -> 64 -> 1, tanh, fixed weights; served as "mlp"."""
    keras.utils.set_random_seed(5)
    return keras.Sequential(
        [
            keras.Input((MLP_SIZE,)),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


MODELS = {"demo": hs.DEMO_MODEL_SOURCE, "mlp": "soak:small_mlp"}


@dataclass(frozen=True)
class Case:
    """One input with its expected results, computed in-process."""

    model: str
    x: np.ndarray
    v: np.ndarray
    hessian: np.ndarray
    gradient: np.ndarray
    hvp: np.ndarray
    evaluation: hs.Evaluation


@dataclass
class Tally:
    """Outcomes of every call, by method."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    mismatches: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def record(self, method: str, seconds: float) -> None:
        self.latencies[method].append(seconds)


def cases(rng: np.random.Generator) -> list[Case]:
    """Inputs of every model and batch size, with results from the library."""
    prepared = []
    for name, source in MODELS.items():
        model = hs.load_model(source, name=name)
        size = model.inputs[0].shape[0]
        for index in range(INPUTS_PER_MODEL):
            batch = BATCH_SIZES[index % len(BATCH_SIZES)]
            x = rng.standard_normal((batch, size)).astype(np.float32)
            v = rng.standard_normal((batch, size)).astype(np.float32)
            prepared.append(
                Case(
                    model=name,
                    x=x,
                    v=v,
                    hessian=hs.hessian(model, x),
                    gradient=hs.gradient(model, x),
                    hvp=hs.hvp(model, x, v),
                    evaluation=hs.evaluate(model, x),
                )
            )
    return prepared


def _same(got: np.ndarray, expected: np.ndarray) -> bool:
    return got.shape == expected.shape and bool(np.allclose(got, expected, rtol=RTOL, atol=ATOL))


Call = Callable[[hessd.AsyncClient, Case, random.Random], Awaitable[bool]]


async def _hessian(client: hessd.AsyncClient, case: Case, rng: random.Random) -> bool:
    return _same(await client.hessian(case.model, case.x), case.hessian)


async def _gradient(client: hessd.AsyncClient, case: Case, rng: random.Random) -> bool:
    return _same(await client.gradient(case.model, case.x), case.gradient)


async def _hvp(client: hessd.AsyncClient, case: Case, rng: random.Random) -> bool:
    return _same(await client.hvp(case.model, case.x, case.v), case.hvp)


async def _evaluate(client: hessd.AsyncClient, case: Case, rng: random.Random) -> bool:
    got = await client.evaluate(case.model, case.x)
    return all(_same(a, b) for a, b in zip(got, case.evaluation, strict=True))


async def _stream(client: hessd.AsyncClient, case: Case, rng: random.Random) -> bool:
    got = [h async for h in client.stream(case.model, [case.x, case.x[:1], case.x])]
    expected = [case.hessian, case.hessian[:1], case.hessian]
    return len(got) == 3 and all(_same(a, b) for a, b in zip(got, expected, strict=True))


async def _metadata(client: hessd.AsyncClient, case: Case, rng: random.Random) -> bool:
    return (await client.metadata(case.model)).name == case.model


async def _wrong_shape(client: hessd.AsyncClient, case: Case, rng: random.Random) -> bool:
    try:
        await client.hessian(case.model, case.x[:, :-1])
    except hessd.ShapeError as error:
        return error.field == "x[x]" and error.reason == "SHAPE_MISMATCH"
    return False


METHODS: dict[str, tuple[Call, int]] = {
    "hessian": (_hessian, 30),
    "gradient": (_gradient, 20),
    "hvp": (_hvp, 15),
    "evaluate": (_evaluate, 15),
    "stream (3 batches)": (_stream, 10),
    "metadata": (_metadata, 5),
    "wrong shape (ShapeError)": (_wrong_shape, 5),
}


async def client_loop(target: str, prepared: list[Case], deadline: float, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    names, weights = list(METHODS), [weight for _, weight in METHODS.values()]
    async with hessd.AsyncClient(target, timeout=CALL_TIMEOUT_S) as client:
        while time.monotonic() < deadline:
            method = rng.choices(names, weights)[0]
            case = rng.choice(prepared)
            started = time.perf_counter()
            try:
                correct = await METHODS[method][0](client, case, rng)
            except hessd.HessdError as error:
                tally.failures.append(f"{method} on {case.model}: {type(error).__name__}: {error.message}")
                continue
            tally.record(method, time.perf_counter() - started)
            if not correct:
                tally.mismatches.append(f"{method} on {case.model}, batch {case.x.shape[0]}")


async def soak(target: str, prepared: list[Case], clients: int, seconds: float) -> tuple[Tally, float]:
    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(client_loop(target, prepared, deadline, seed, tally) for seed in range(clients)))
    return tally, time.monotonic() - started


def compile_counts(target: str) -> dict[str, int]:
    with hessd.Client(target, timeout=CALL_TIMEOUT_S) as client:
        return {name: client.metadata(name).compile_count for name in MODELS}


def report(tally: Tally, elapsed: float, clients: int, drained: int, compiles: tuple[dict, dict]) -> bool:
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"- machine: {_cpu()}, {os.cpu_count()} logical cores, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"- command: python benchmarks/soak.py --clients {clients} --seconds {elapsed:.0f}")
    print()
    print("| method | calls | calls/s | p50 (ms) | p99 (ms) |")
    print("|---|---:|---:|---:|---:|")
    total = 0
    every = []
    for method in METHODS:
        latencies = np.array(tally.latencies.get(method, []), dtype=np.float64) * 1e3
        total += len(latencies)
        every.extend(latencies)
        if len(latencies):
            print(f"| {method} | {len(latencies):,} | {len(latencies) / elapsed:,.1f} | "
                  f"{np.percentile(latencies, 50):.1f} | {np.percentile(latencies, 99):.1f} |")
    all_latencies = np.array(every)
    print(f"| all | {total:,} | {total / elapsed:,.1f} | {np.percentile(all_latencies, 50):.1f} | "
          f"{np.percentile(all_latencies, 99):.1f} |")
    print()
    compiled_during = sum(compiles[1].values()) - sum(compiles[0].values())
    print(f"- wrong results: {len(tally.mismatches)}; unexpected errors: {len(tally.failures)}; "
          f"functions compiled during the run: {compiled_during}; server exit status after SIGTERM: {drained}")
    for problem in (tally.mismatches + tally.failures)[:10]:
        print(f"  - {problem}")
    return not tally.mismatches and not tally.failures and compiled_during == 0 and drained == 0 and total > 0


def _cpu() -> str:
    """The CPU's model name where the system tells it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (%(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to call (%(default)s)")
    args = parser.parse_args(argv)
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    prepared = cases(np.random.default_rng(0))
    flags = [f"--model={name}={source}" for name, source in MODELS.items()]
    warmup = ",".join(str(b) for b in sorted({1 << max(b - 1, 0).bit_length() for b in BATCH_SIZES}))
    with ServerProcess(*flags, "--warmup-batch-sizes", warmup, "--log-level", "WARNING") as server:
        before = compile_counts(server.target)
        tally, elapsed = asyncio.run(soak(server.target, prepared, args.clients, args.seconds))
        after = compile_counts(server.target)
        drained = server.terminate()
    return 0 if report(tally, elapsed, args.clients, drained, (before, after)) else 1


if __name__ == "__main__":
    sys.exit(main())
