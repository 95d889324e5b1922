"""The same model, inputs and options give bitwise-identical per-example
Hessians in every process: the library and servers, with different warm-ups,
call orders and CPU load, and after a restart that reads the tuning record.

Each process that computes is fresh (``support/reproducibility_worker.py`` or a
``hessd-server`` child), so nothing one of them chose can leak into another except
through the tuning record on disk. The processes of a comparison that do not depend
on each other run at the same time (the test reads the servers' results itself).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import hessd_server as hs
from hessd_server.serving.server_process import ServerProcess
from support import reproducibility_worker as worker
from support.reproducibility_worker import WORKER_TIMEOUT_S, run_worker, worker_on_path  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("worker_on_path")


def _server_flags(*flags: str) -> tuple[str, ...]:
    models = [arg for name in worker.MODELS for arg in ("--model", f"{name}=support.reproducibility_worker:{name}")]
    return (*models, "--warmup-methods", ",".join(worker.WARMED_METHODS), *flags)


def _from_server(server_flags: tuple[str, ...], *, reverse: bool = False) -> dict[str, np.ndarray]:
    with ServerProcess(*_server_flags(*server_flags), startup_timeout=WORKER_TIMEOUT_S) as server:
        return worker.from_server(server.target, reverse=reverse)


def _all_at_once(runs: dict[str, Callable[[], dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Each of ``runs`` (which starts its own process) called at the same time; their results by name."""
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run) for name, run in runs.items()}
        return {name: future.result() for name, future in futures.items()}


def _sources(run: dict[str, np.ndarray], buckets: set[tuple[str, int]] | None = None) -> set[str]:
    """How the run's buckets (or only ``buckets``, (model, bucket) pairs) chose their strategies."""
    return {
        source
        for model, chosen in json.loads(str(run["chosen"])).items()
        for batch, _, source in chosen
        if buckets is None or (model, batch) in buckets
    }


def _case_buckets() -> set[tuple[str, int]]:
    """(model, bucket) of every case: the buckets the tuning process wrote records for
    (a server also warms buckets of its own, which it tunes)."""
    return {(model, 1 << (batch - 1).bit_length()) for model, batch in worker.CASES}


def _assert_bitwise_equal(runs: dict[str, dict[str, np.ndarray]]) -> None:
    (first_name, first), *others = runs.items()
    for name, run in others:
        for case in (f"{model}-{batch}" for model, batch in worker.CASES):
            np.testing.assert_array_equal(run[case], first[case], err_msg=f"{case}: {name} differs from {first_name}")


@pytest.mark.slow  # fresh processes that import TensorFlow are the point here
def test_without_a_record_every_process_takes_the_rule_and_computes_the_same_bits(tmp_path: Path) -> None:
    runs = _all_at_once(
        {
            "library": lambda: run_worker(tmp_path / "library.npz"),
            "library, reversed, warmed up, under load": lambda: run_worker(
                tmp_path / "reversed.npz", "--reverse", "--warmup", "1,2,4,8,16,32", "--busy"
            ),
            "server warmed at 2": lambda: _from_server(("--warmup-batch-sizes", "2")),
            "server warmed at 1,8,32, reversed": lambda: _from_server(
                ("--warmup-batch-sizes", "1,8,32"), reverse=True
            ),
        }
    )
    _assert_bitwise_equal(runs)
    assert all(_sources(run) == {"rule"} for run in runs.values())


@pytest.mark.slow  # fresh processes that import TensorFlow are the point here
def test_a_tuning_record_gives_every_later_process_the_tuned_bits(tmp_path: Path) -> None:
    cache = tmp_path / "tuning"
    tuned = run_worker(tmp_path / "tuned.npz", "--tuning-cache", str(cache), "--busy")
    assert _sources(tuned) <= {"tuned"} and list(cache.rglob("*.json"))
    runs = {
        "library that tuned under load": tuned,
        **_all_at_once(
            {
                "server reading the record, reversed": lambda: _from_server(
                    ("--tuning-cache", str(cache), "--warmup-batch-sizes", "1,8"), reverse=True
                ),
                "library restarted, reversed": lambda: run_worker(
                    tmp_path / "restart.npz", "--tuning-cache", str(cache), "--reverse"
                ),
            }
        ),
    }
    _assert_bitwise_equal(runs)
    for name, run in list(runs.items())[1:]:
        assert _sources(run, _case_buckets()) == {"record"}, name


def test_two_strategies_that_both_pass_the_gate_differ_in_the_last_bits() -> None:
    """Why the choice must not depend on the process: the strategies agree within
    the gate's tolerance but not bit for bit."""
    differing = []
    for name, batch in worker.CASES[:5]:
        x = worker.case_input(name, batch)
        pinned = {
            strategy: hs.hessian(hs.load_model(worker.MODELS[name][0](), config=hs.EngineConfig(strategy=strategy)), x)
            for strategy in ("pfor", "structural")
        }
        np.testing.assert_allclose(pinned["structural"], pinned["pfor"], rtol=1e-4, atol=1e-6)
        if not np.array_equal(pinned["structural"], pinned["pfor"]):
            differing.append((name, batch))
    assert differing, "pfor and structural gave identical bits on every case"


def test_a_record_the_process_did_not_write_is_adopted(tmp_path: Path) -> None:
    """A bucket's record is written once: a process that tunes it later takes the recorded strategy."""
    config = hs.EngineConfig(tuning_cache=str(tmp_path), max_batch_size=8)
    x = worker.case_input("mlp10", 8)
    first = hs.load_model(worker.mlp10(), config=config)
    hs.hessian(first, x)
    (record,) = tmp_path.rglob("*.json")
    chosen = json.loads(record.read_text())["strategy"]
    other = "pfor" if chosen == "structural" else "structural"
    record.write_text(json.dumps({**json.loads(record.read_text()), "strategy": other}))
    second = hs.load_model(worker.mlp10(), config=config)
    blocks = hs.hessian(second, x)
    assert second.metadata().strategy == other
    assert {t.source for t in second.metadata().strategy_timings} == {"record"}
    np.testing.assert_array_equal(blocks, hs.hessian(hs.load_model(worker.mlp10(), config=hs.EngineConfig(strategy=other)), x))


def test_a_malformed_record_is_ignored_and_the_bucket_tuned(tmp_path: Path) -> None:
    config = hs.EngineConfig(tuning_cache=str(tmp_path), max_batch_size=8)
    x = worker.case_input("mlp10", 8)
    hs.hessian(hs.load_model(worker.mlp10(), config=config), x)
    (record,) = tmp_path.rglob("*.json")
    record.write_text("{not json")
    model = hs.load_model(worker.mlp10(), config=config)
    hs.hessian(model, x)
    assert {t.source for t in model.metadata().strategy_timings} == {"tuned"}
    assert model.metadata().strategy in ("pfor", "structural")
