"""Replicas on one machine behind one SDK client with a multi-address target: three
hessd-server processes on loopback ports share the calls, SIGTERM on one mid-load fails
no call while the other two keep answering correctly, and a replica still warming up
gets no call until it reports SERVING; health checks need no token on a server that
asks callers for one."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import hessd
from hessd_server.engine.demo_model import DEMO_MODEL_SOURCE, build_demo_model
from hessd_server.serving.server_config import ModelSpec, ServerConfig
from hessd_server.serving.server_process import ServerProcess
from support.wire_fixtures import LOAD_GATE, RunningServer, rng_array, serving

pytestmark = pytest.mark.slow  # child processes that import TensorFlow are the point here

WAIT_S = 120.0
REPLICAS = 3
ROUNDS = 10
LOAD_THREADS = 4
CALLS_BEFORE_SIGTERM = 24
CALLS_AFTER_EXIT = 8
FLAGS = (
    "--listen", "127.0.0.1:0",
    "--metrics-port", "0",
    "--metrics-host", "127.0.0.1",
    "--warmup-batch-sizes", "2",
    "--warmup-methods", "hessian",
    "--engine-threads", "1",
    "--grace-seconds", "30",
)  # fmt: skip
"""The replicas' flags; they are only asked for Hessians, so only the Hessian is warmed."""
X = rng_array((2, 10), seed=12)


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[ServerProcess]]:
    servers = [ServerProcess(*FLAGS) for _ in range(REPLICAS)]
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(REPLICAS) as starting:
        list(starting.map(stack.enter_context, servers))
        yield servers


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The demo model's per-example Hessians at X, in closed form (float64):
    H_b = W1 diag(w2 * sigmoid''(z_b)) W1^T with z_b = x_b W1 + b1."""
    w1, b1, w2, _ = (np.float64(w) for w in build_demo_model().get_weights())
    s = 1.0 / (1.0 + np.exp(-(X.astype(np.float64) @ w1 + b1)))
    curvature = w2[:, 0] * s * (1 - s) * (1 - 2 * s)
    return np.einsum("ik,bk,jk->bij", w1, curvature, w1)


def _tcp_address(server: ServerProcess) -> str:
    (address,) = (a for a in server.addresses() if not a.startswith("unix:"))
    return address


def _hessian_calls(server: ServerProcess) -> float:
    """The server's count of Hessian calls answered OK, from its /metrics."""
    with urllib.request.urlopen(server.metrics_url(), timeout=WAIT_S) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hessd_requests_total" and sample.labels == {
                "method": "Hessian",
                "code": "OK",
            }:
                return sample.value
    return 0.0


def _check(hessian: np.ndarray, reference: np.ndarray) -> None:
    assert hessian.shape == (2, 10, 10) and hessian.dtype == np.float32
    np.testing.assert_allclose(hessian, reference, rtol=1e-4, atol=1e-6)


def _until_every_replica_answered(client: hessd.Client, replicas: list[ServerProcess]) -> None:
    """Call until each replica has answered once: round_robin sends calls only to the
    replicas that are connected and SERVING, and all may not be at the first call."""
    for _ in range(100):
        if all(_hessian_calls(server) > 0 for server in replicas):
            return
        client.hessian("demo", X)
    pytest.fail("a replica never got a call")


def test_calls_spread_over_every_replica(
    replicas: list[ServerProcess], reference: np.ndarray
) -> None:
    with hessd.Client([_tcp_address(s) for s in replicas], timeout=WAIT_S) as client:
        _until_every_replica_answered(client, replicas)
        before = [_hessian_calls(server) for server in replicas]
        for _ in range(ROUNDS * REPLICAS):
            _check(client.hessian("demo", X), reference)
    spread = [_hessian_calls(server) - count for server, count in zip(replicas, before)]
    assert spread == [ROUNDS] * REPLICAS


def test_the_async_client_spreads_calls_too(
    replicas: list[ServerProcess], reference: np.ndarray
) -> None:
    target = "ipv4:" + ",".join(_tcp_address(s) for s in replicas)
    before = [_hessian_calls(server) for server in replicas]

    async def calls() -> None:
        async with hessd.AsyncClient(target, timeout=WAIT_S) as client:
            for _ in range(ROUNDS * REPLICAS):
                _check(await client.hessian("demo", X), reference)

    asyncio.run(calls())
    spread = [_hessian_calls(server) - count for server, count in zip(replicas, before)]
    assert sum(spread) == ROUNDS * REPLICAS and all(calls > 0 for calls in spread)


def test_sigterm_on_one_replica_mid_load_fails_no_call(
    replicas: list[ServerProcess], reference: np.ndarray
) -> None:
    victim, *survivors = replicas
    victim_before = _hessian_calls(victim)
    lock = threading.Lock()
    answered = 0
    answered_after_exit = [0] * LOAD_THREADS
    failures: list[BaseException] = []
    mid_load = threading.Event()
    victim_gone = threading.Event()

    def load(worker: int, client: hessd.Client) -> None:
        nonlocal answered
        try:
            while answered_after_exit[worker] < CALLS_AFTER_EXIT:
                gone = victim_gone.is_set()
                _check(client.hessian("demo", X), reference)
                with lock:
                    answered += 1
                    if answered >= CALLS_BEFORE_SIGTERM:
                        mid_load.set()
                if gone:
                    answered_after_exit[worker] += 1
        except BaseException as error:
            failures.append(error)
            mid_load.set()

    with hessd.Client([_tcp_address(s) for s in replicas], timeout=WAIT_S) as client:
        _until_every_replica_answered(client, replicas)
        survivors_before = [_hessian_calls(server) for server in survivors]
        workers = [
            threading.Thread(target=load, args=(worker, client)) for worker in range(LOAD_THREADS)
        ]
        for worker in workers:
            worker.start()
        try:
            assert mid_load.wait(WAIT_S) and not failures, failures
            victim_served = _hessian_calls(victim) - victim_before
            victim.process.send_signal(signal.SIGTERM)
            assert victim.process.wait(WAIT_S) == 0, victim.output()
        finally:
            victim_gone.set()
            for worker in workers:
                worker.join(WAIT_S)
    assert not failures, failures
    assert victim_served > 0, "the replica was not under load when it got SIGTERM"
    assert "draining in-flight calls" in victim.output()
    survivors_served = [
        _hessian_calls(server) - count for server, count in zip(survivors, survivors_before)
    ]
    assert all(served > 0 for served in survivors_served)
    assert sum(survivors_served) >= LOAD_THREADS * CALLS_AFTER_EXIT


def test_a_replica_still_warming_up_gets_no_call_until_it_is_serving(
    reference: np.ndarray,
) -> None:
    def hessian_calls(server: RunningServer) -> float:
        """Hessian calls the server has finished, whatever their status."""
        registry = server.server.metrics.registry
        return sum(
            sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if sample.name == "hessd_requests_total" and sample.labels["method"] == "Hessian"
        )

    LOAD_GATE.clear()
    warming = RunningServer(
        ServerConfig(
            models=(ModelSpec("demo", "support.wire_fixtures:gated_demo_model"),),
            listen="127.0.0.1:0",
            warmup_batch_sizes=(2,),
        )
    )
    try:
        with serving([("demo", DEMO_MODEL_SOURCE)]) as ready:
            with hessd.Client([ready.target, warming.target], timeout=WAIT_S) as client:
                for _ in range(ROUNDS):
                    _check(client.hessian("demo", X), reference)
                assert hessian_calls(warming) == 0 and hessian_calls(ready) == ROUNDS
                LOAD_GATE.set()
                warming.wait_until_serving()
                for _ in range(100):
                    if hessian_calls(warming) > 0:
                        break
                    _check(client.hessian("demo", X), reference)
                assert hessian_calls(warming) > 0, "the replica got no call once SERVING"
    finally:
        LOAD_GATE.set()
        warming.stop()


def test_health_checked_balancing_works_with_a_server_that_asks_for_a_token(
    tmp_path: Path, reference: np.ndarray
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    with serving([("demo", DEMO_MODEL_SOURCE)], auth_token_file=str(tokens)) as running:
        target = [running.target]
        balanced = {"timeout": WAIT_S, "load_balancing": "round_robin"}
        with hessd.Client(target, token="s3cret", **balanced) as client:
            _check(client.hessian("demo", X), reference)
        with hessd.Client(target, **balanced) as client:
            with pytest.raises(hessd.UnauthenticatedError):
                client.hessian("demo", X)
