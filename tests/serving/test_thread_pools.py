"""``--intra-op-threads`` and ``--inter-op-threads`` size TensorFlow's thread pools
in a fresh server process; a process whose TensorFlow has started refuses other sizes."""

from __future__ import annotations

import contextlib
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf

import hessd
import hessd_server as hs
from hessd_server.engine.runtime import set_thread_pools
from hessd_server.serving.server import HessdServer
from hessd_server.serving.server_config import ServerConfig
from hessd_server.serving.server_process import ServerProcess

pytestmark = pytest.mark.slow  # child processes that import TensorFlow are the point here

WARMUP = ("--warmup-methods", "hessian", "--warmup-batch-sizes")
"""The servers here are only asked for Hessians (the batch size follows)."""


def _logged_threads(server: ServerProcess) -> tuple[int, int]:
    found = re.search(r"TensorFlow threads: intra-op (\d+), inter-op (\d+)", server.output())
    assert found is not None, server.output()
    return int(found.group(1)), int(found.group(2))


def test_the_flags_size_tensorflows_pools_and_the_server_computes_as_before() -> None:
    x = np.random.default_rng(5).standard_normal((3, 10)).astype(np.float32)
    expected = hs.hessian(hs.load_model(hs.DEMO_MODEL_SOURCE), x)
    sized = ServerProcess("--intra-op-threads", "1", "--inter-op-threads", "2", *WARMUP, "4")
    default = ServerProcess(*WARMUP, "1")
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(2) as starting:
        list(starting.map(stack.enter_context, (sized, default)))
        assert _logged_threads(sized) == (1, 2)
        with hessd.Client(sized.target, timeout=60) as client:
            np.testing.assert_allclose(client.hessian("demo", x), expected, rtol=1e-5, atol=1e-6)
        assert _logged_threads(default) == (0, 0), "TensorFlow's own choice is the default"


def test_a_started_tensorflow_refuses_other_sizes_and_the_server_says_which_flag() -> None:
    hs.hessian(hs.load_model(hs.DEMO_MODEL_SOURCE), np.zeros((1, 10), np.float32))
    current = tf.config.threading.get_intra_op_parallelism_threads()
    assert set_thread_pools(0, 0) == (current, tf.config.threading.get_inter_op_parallelism_threads())
    with pytest.raises(RuntimeError, match="intra-op threads can only be set before"):
        HessdServer(ServerConfig(intra_op_threads=current + 3))


@pytest.mark.parametrize("field", ["intra_op_threads", "inter_op_threads"])
def test_negative_sizes_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        ServerConfig(**{field: -1})
