"""A fresh process for test_reproducible_results: computes the per-example
Hessians of :data:`CASES` in-process (the library) or from a server, in a given
order, and saves them with each bucket's chosen strategy and its source.

    python -m support.reproducibility_worker OUT.npz [--server TARGET] [--reverse]
        [--warmup 1,8,32] [--tuning-cache DIR] [--busy]
        [--repository DIR [--record]]

The model factories are also what the test's servers load
(``support.reproducibility_worker:mlp10`` and so on), and :func:`from_server` reads
the same cases from such a server (``--server``). With ``--repository`` the library
loads each model from ``DIR/<name>/1/model.keras`` instead (:func:`save_repository`
writes it), and with ``--record`` tunes each one into the tuning records beside
its version, as ``hessd-server --write-tuning-records`` does. ``--warmup``
compiles the per-example Hessian (:data:`WARMED_METHODS`) at those batch sizes' buckets first.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pytest

import hessd
import hessd_server as hs
from support import engine_references as refs

TESTS = Path(__file__).resolve().parents[1]
"""The tests' folder, which a child process needs on its ``PYTHONPATH`` to import this module."""
WORKER_TIMEOUT_S = 900
"""How long one worker process may take before the test calls it a hang."""


@pytest.fixture
def worker_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes (workers, servers) import this module and ``support.engine_references``."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), *sys.path]))


def run_worker(out: Path, *flags: str) -> dict[str, np.ndarray]:
    """Run this module in a fresh process with ``flags`` (see the module's usage) and
    return the arrays it saved to ``out``; needs :func:`worker_on_path`."""
    result = subprocess.run(
        [sys.executable, "-m", "support.reproducibility_worker", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with np.load(out) as saved:
        return {key: saved[key] for key in saved.files}


def mlp10() -> keras.Model:
    """10 -> 16 (tanh) -> 2 (tanh)."""
    return refs.tanh_mlp(10, outputs=2)


def wide() -> keras.Model:
    """256 -> 64 (tanh) -> 64 (tanh) -> 1: the benchmark's MLP shape, smaller."""
    keras.utils.set_random_seed(41)
    return keras.Sequential(
        [
            keras.Input((256,)),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


def conv() -> keras.Model:
    """Conv2D on (5, 5, 2) images -> softplus -> Dense(1)."""
    return refs.conv_model()


MODELS: dict[str, tuple[Callable[[], keras.Model], tuple[int, ...]]] = {
    "mlp10": (mlp10, (10,)),
    "wide": (wide, (256,)),
    "conv": (conv, (5, 5, 2)),
}
CASES: tuple[tuple[str, int], ...] = (("mlp10", 1), ("mlp10", 3), ("mlp10", 32), ("wide", 1), ("wide", 8), ("conv", 3), ("conv", 16))
"""(model, batch size) pairs: buckets small enough to take a larger bucket's
strategy and large enough to be chosen on their own."""


WARMED_METHODS = ("hessian",)
"""What ``--warmup`` (and the tests' servers, ``--warmup-methods``) compile: the per-example
Hessian is the only method whose strategy is chosen, so the only one whose warm-up can
change a bucket's history."""


def save_repository(repository: Path) -> None:
    """Save every model of :data:`MODELS` as version 1 of a model repository."""
    for name, (build, _) in MODELS.items():
        (repository / name / "1").mkdir(parents=True)
        build().save(repository / name / "1" / "model.keras")


def _library_model(name: str, repository: str | None, record: bool, tuning_cache: str | None) -> hs.Model:
    """Model ``name`` for the library: built by its factory, or loaded from ``repository``."""
    if repository is None:
        return hs.load_model(MODELS[name][0](), name=name, config=hs.EngineConfig(tuning_cache=tuning_cache))
    version = Path(repository) / name / "1"
    cache = str(version / "tuning") if record else tuning_cache
    return hs.load_model(version / "model.keras", name=name, config=hs.EngineConfig(tuning_cache=cache))


def case_input(name: str, batch: int) -> np.ndarray:
    """The fixed float32 input (batch, *S) of a case."""
    shape = MODELS[name][1]
    return np.random.default_rng(batch * 1000 + len(name)).standard_normal((batch, *shape)).astype(np.float32)


def _chosen(metadata: hessd.ModelMetadata) -> list[list[object]]:
    return [[t.batch, t.strategy, t.source] for t in metadata.strategy_timings if t.outcome == "chosen"]


def from_server(target: str, *, reverse: bool = False) -> dict[str, np.ndarray]:
    """The cases' per-example Hessians from the server at ``target``, in the order of
    :data:`CASES` (or reversed), and under ``"chosen"`` what each bucket chose, as
    :func:`main` saves them."""
    results: dict[str, np.ndarray] = {}
    with hessd.Client(target, timeout=300) as client:
        for name, batch in CASES[::-1] if reverse else CASES:
            results[f"{name}-{batch}"] = client.hessian(name, case_input(name, batch))
        chosen = {name: _chosen(client.metadata(name)) for name in MODELS}
    return {"chosen": np.array(json.dumps(chosen)), **results}


def _busy(stop: threading.Event) -> None:
    """Load the CPU (numpy releases the GIL) until ``stop`` is set."""
    a = np.random.default_rng(0).standard_normal((300, 300))
    while not stop.is_set():
        a = np.tanh(a @ a)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--server")
    parser.add_argument("--reverse", action="store_true")
    parser.add_argument("--warmup", type=lambda text: [int(b) for b in text.split(",")])
    parser.add_argument("--tuning-cache")
    parser.add_argument("--repository")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--busy", action="store_true", help="load the CPU from two threads throughout")
    args = parser.parse_args()
    stop = threading.Event()
    loaders = [threading.Thread(target=_busy, args=(stop,), daemon=True) for _ in range(2 if args.busy else 0)]
    for loader in loaders:
        loader.start()
    cases = CASES[::-1] if args.reverse else CASES
    if args.server:
        saved = from_server(args.server, reverse=args.reverse)
    else:
        models = {name: _library_model(name, args.repository, args.record, args.tuning_cache) for name in MODELS}
        if args.warmup:
            for model in models.values():
                hs.warmup(model, args.warmup, methods=WARMED_METHODS)
        results = {f"{name}-{batch}": hs.hessian(models[name], case_input(name, batch)) for name, batch in cases}
        chosen = {name: _chosen(model.metadata()) for name, model in models.items()}
        saved = {"chosen": np.array(json.dumps(chosen)), **results}
    stop.set()
    np.savez(args.out, **saved)


if __name__ == "__main__":
    main()
