"""Compiles and concurrency: metadata never waits on a compile, different
functions of one model compile at the same time, and each function compiles
once however many first calls race for it. Every overlap is made certain with
a gate that holds traces, never by timing."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

import hessd_server as hs
from support import engine_references as refs

RNG = np.random.default_rng(3)


def _eventually(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds or :data:`refs.WAIT_S` passes (a hang guard)."""
    deadline = time.monotonic() + refs.WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _gated() -> tuple[refs.TraceGate, hs.Model]:
    gate = refs.TraceGate()
    model = hs.load_model(refs.gated_model(gate), config=hs.EngineConfig(max_batch_size=8))
    hs.gradient(model, RNG.normal(size=(1, 3)).astype(np.float32))
    gate.armed = True
    return gate, model


def test_metadata_answers_while_a_function_compiles() -> None:
    gate, model = _gated()
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    with ThreadPoolExecutor(1) as pool:
        compiling = pool.submit(hs.hessian, model, x)
        try:
            assert gate.entered.wait(refs.WAIT_S)
            metadata = model.metadata()
            assert gate.inside == 1 and not compiling.done(), "metadata() waited for the compile"
            assert metadata.compile_count == 1 and metadata.strategy is None
        finally:
            gate.opened.set()
        blocks = compiling.result()
    assert model.metadata().compile_count == 2 and model.metadata().strategy == "pfor"
    np.testing.assert_allclose(blocks, hs.hessian(model, x), rtol=1e-6)


def test_different_buckets_and_kinds_compile_at_the_same_time() -> None:
    gate, model = _gated()
    calls = [
        lambda: hs.hessian(model, RNG.normal(size=(3, 3)).astype(np.float32)),
        lambda: hs.hessian(model, RNG.normal(size=(8, 3)).astype(np.float32)),
        lambda: hs.gradient(model, RNG.normal(size=(5, 3)).astype(np.float32)),
    ]
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            all_inside = _eventually(lambda: gate.inside == len(calls))
        finally:
            gate.opened.set()
        for future in futures:
            future.result()
    assert all_inside, "compiles of different functions of one model waited for each other"
    assert model.metadata().compile_count == 1 + len(calls)


def test_concurrent_first_calls_compile_each_function_once() -> None:
    gate, model = _gated()
    x = RNG.normal(size=(8, 3)).astype(np.float32)
    batches = [3, 4, 3, 4, 7, 8, 7, 8]
    with ThreadPoolExecutor(2 + len(batches)) as pool:
        first: Future[np.ndarray] = pool.submit(hs.hessian, model, x[:3])
        assert gate.entered.wait(refs.WAIT_S)
        second: Future[np.ndarray] = pool.submit(hs.hessian, model, x[:7])
        all_traced = _eventually(lambda: gate.inside == 2)
        rest = [pool.submit(hs.hessian, model, x[:batch]) for batch in batches]
        try:
            all_waiting = _eventually(lambda: model.build_locks.waits == len(batches))
            building = len(model.build_locks)
        finally:
            gate.opened.set()
        results = [future.result() for future in (first, second, *rest)]
    assert all_traced and all_waiting, (gate.inside, model.build_locks.waits)
    assert building == 2, "one lock per function being built, shared by the calls waiting for it"
    assert len(model.build_locks) == 0, "finished builds leave no lock behind"
    assert gate.traces == 2 and model.metadata().compile_count == 1 + 2
    reference = hs.hessian(hs.load_model(refs.gated_model(refs.TraceGate())), x)
    for batch, blocks in zip([3, 7, *batches], results):
        np.testing.assert_allclose(blocks, reference[:batch], rtol=1e-5, atol=1e-7)
