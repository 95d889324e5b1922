"""hessd-server as a process: SIGTERM drains in-flight calls and exits 0; a bad model exits 1."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import hessd
from hessd_server.serving.server_process import ServerProcess
from wire_fixtures import console_script, rng_array

WAIT_S = 60.0


def test_sigterm_lets_the_call_in_flight_finish_and_exits_zero() -> None:
    x = rng_array((2, 10))
    feed: queue.Queue[np.ndarray | None] = queue.Queue()

    def items() -> Iterator[np.ndarray]:
        while (item := feed.get()) is not None:
            yield item

    command = (console_script("hessd-server"),)
    with ServerProcess(
        "--warmup-batch-sizes", "2", "--grace-seconds", "30", command=command
    ) as server:
        with hessd.Client(server.target, timeout=WAIT_S) as client:
            results = client.stream("demo", items())
            feed.put(x)
            first = next(results)
            server.process.send_signal(signal.SIGTERM)
            with hessd.Client(server.target, timeout=WAIT_S) as newcomer:
                deadline = time.monotonic() + WAIT_S
                with pytest.raises(hessd.UnavailableError):
                    while time.monotonic() < deadline:
                        newcomer.gradient("demo", x)
                        time.sleep(0.05)
            assert server.process.poll() is None, "the server quit before its call finished"
            feed.put(x)
            feed.put(x)
            feed.put(None)
            rest = list(results)
        assert server.process.wait(WAIT_S) == 0, server.output()
    assert len(rest) == 2
    for result in (first, *rest):
        assert result.shape == (2, 10, 10) and np.array_equal(result, first)


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
