"""hessd-server as a process: SIGTERM drains in-flight calls and exits 0 within its grace;
open streams take no new items once draining; a bad model exits 1.

A compile is held across processes by :func:`support.wire_fixtures.held_model`, through files in
a temporary directory, so that a call is certainly in flight when SIGTERM arrives.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

import hessd
from hessd_server.serving.server_process import ServerProcess
from support.wire_fixtures import HOLD_DIRECTORY_VARIABLE, console_script, rng_array

pytestmark = pytest.mark.slow  # child processes that import TensorFlow are the point here

WAIT_S = 60.0
TESTS = Path(__file__).resolve().parents[1]


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)


def _held_call(target: str) -> tuple[threading.Thread, Future[np.ndarray]]:
    """A Hessian of the held model, called on a thread; its compile waits for ``release``."""
    result: Future[np.ndarray] = Future()

    def call() -> None:
        try:
            with hessd.Client(target, timeout=WAIT_S * 2) as client:
                result.set_result(client.hessian("held", np.full((2, 3), 0.5, np.float32)))
        except Exception as error:
            result.set_exception(error)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The hold directory, in the environment of the servers this test starts."""
    monkeypatch.setenv(HOLD_DIRECTORY_VARIABLE, str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


def test_sigterm_drains_the_call_in_flight_refuses_new_stream_items_and_exits_zero(hold: Path) -> None:
    x = rng_array((2, 10))
    feed: queue.Queue[np.ndarray | None] = queue.Queue()

    def items() -> Iterator[np.ndarray]:
        while (item := feed.get()) is not None:
            yield item

    flags = ("--model", "demo=hessd_server.engine.demo_model:build_demo_model", "--model", "held=support.wire_fixtures:held_model")
    command = (console_script("hessd-server"),)
    with ServerProcess(*flags, "--warmup-batch-sizes", "2", "--grace-seconds", "60", command=command) as server:
        with hessd.Client(server.target, timeout=WAIT_S) as client:
            results = client.stream("demo", items())
            feed.put(x)
            first = next(results)
            held, held_result = _held_call(server.target)
            _wait_for(hold / "held")
            server.process.send_signal(signal.SIGTERM)
            with hessd.Client(server.target, timeout=WAIT_S) as newcomer:
                deadline = time.monotonic() + WAIT_S
                with pytest.raises(hessd.UnavailableError):
                    while time.monotonic() < deadline:
                        newcomer.gradient("demo", x)
                        time.sleep(0.05)
            feed.put(x)
            with pytest.raises(hessd.UnavailableError, match="shutting down"):
                next(results)
            feed.put(None)
            assert server.process.poll() is None, "the server quit before its call finished"
            (hold / "release").touch()
            blocks = held_result.result(WAIT_S)
            held.join(WAIT_S)
        assert server.process.wait(WAIT_S) == 0, server.output()
    assert first.shape == (2, 10, 10)
    t = np.tanh(0.5)
    np.testing.assert_allclose(blocks, np.broadcast_to(np.eye(3) * (-2 * t * (1 - t * t)), (2, 3, 3)), rtol=1e-5)


def test_work_still_running_when_the_grace_period_ends_does_not_delay_exit(hold: Path) -> None:
    flags = ("--model", "held=support.wire_fixtures:held_model", "--engine-threads", "1", "--grace-seconds", "1")
    with ServerProcess(*flags) as server:
        held, held_result = _held_call(server.target)
        _wait_for(hold / "held")
        assert server.terminate(WAIT_S) == 0, server.output()
        with pytest.raises(hessd.HessdError):
            held_result.result(WAIT_S)
        held.join(WAIT_S)
        assert "grace period of 1s over" in server.output()


def test_a_model_that_cannot_load_exits_1(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hessd_server.serving.main",
            "--listen",
            f"unix://{tmp_path / 's.sock'}",
            "--model",
            f"bad={tmp_path / 'missing.keras'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 1
    assert "could not start serving" in result.stderr and "missing.keras" in result.stderr
