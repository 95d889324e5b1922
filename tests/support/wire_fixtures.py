"""Helpers of the wire tests: test models, in-process servers and hessd-server subprocesses.

Servers run for real: :class:`RunningServer` runs a ``HessdServer`` on its own
event loop thread, bound to 127.0.0.1:0 (``hessd_server.serving.server_process`` runs
the console script as a child process). The model factories below are loaded
by the server as ``"support.wire_fixtures:<factory>"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import keras
import numpy as np
import tensorflow as tf

from hessd_server import DEMO_MODEL_SOURCE
from hessd_server.engine.model import Model
from hessd_server.serving.server import HessdServer, create_server
from hessd_server.serving.server_config import ModelSpec, ServerConfig
from support import engine_references as refs

T = TypeVar("T")

SERVER_START_TIMEOUT_S = 600.0
"""How long a server may take to start (and :func:`eventually` to wait) before the test calls
it a hang: several xdist workers starting their servers at once on a loaded 2-core machine
take minutes, not seconds."""
WIDE_INPUT_SIZE = 1200
HUGE_INPUT_SIZE = 4096

LOAD_GATE = threading.Event()
"""``gated_demo_model`` blocks until this is set, holding a server in NOT_SERVING."""

TRACE_GATE = refs.TraceGate()
"""Holds the traces of ``gated_trace_model`` once armed (in-process servers only)."""

RUN_GATE = refs.RunGate()
"""Counts the runs of ``gated_runs_model`` and holds each while armed (in-process servers only)."""

ONE_OFF_FAILURE = refs.OneOffFailure()
"""Makes the next run of ``fails_once_model`` fail with an out-of-memory error, once armed."""


def gated_trace_model() -> keras.Model:
    """Dense(4) -> tanh -> Dense(1) on 3 inputs, whose traces wait at :data:`TRACE_GATE` once armed."""
    return refs.gated_model(TRACE_GATE)


def gated_runs_model() -> keras.Model:
    """A small MLP on 12 inputs whose every run passes through :data:`RUN_GATE` (graph mode only)."""
    return refs.gated_runs_model(RUN_GATE)


def fails_once_model() -> keras.Model:
    """sum(sin(x)) on 3 inputs, whose next run runs out of memory once :data:`ONE_OFF_FAILURE` is armed."""
    return refs.fails_once_model(ONE_OFF_FAILURE)


def untraceable_model() -> keras.Model:
    """Runs eagerly, but every way of compiling it fails (with a server path in the error)."""
    return refs.untraceable_model()


def multi_input_model() -> keras.Model:
    """Inputs ``a`` float32 (3,), ``b`` float32 (2, 2) and ``ids`` int32 (2,) -> (B, 2)."""
    keras.utils.set_random_seed(11)
    a = keras.Input((3,), name="a")
    b = keras.Input((2, 2), name="b")
    ids = keras.Input((2,), dtype="int32", name="ids")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(5, 2)(ids))
    joined = keras.layers.Concatenate()([a, keras.layers.Flatten()(b), embedded])
    hidden = keras.layers.Dense(6, activation="tanh")(joined)
    return keras.Model([a, b, ids], keras.layers.Dense(2, activation="softplus")(hidden))


def named_input_model() -> keras.Model:
    """One input named ``spot`` (2,) -> softplus(Dense(3)) -> Dense(1)."""
    keras.utils.set_random_seed(16)
    spot = keras.Input((2,), name="spot")
    hidden = keras.layers.Dense(3, activation="softplus")(spot)
    return keras.Model(spot, keras.layers.Dense(1)(hidden))


def pricing_model(dtype: str = "float32") -> keras.Model:
    """Inputs ``spot`` (2,), ``vol`` (2,) and ``rate`` (1,) of ``dtype``, coupled
    through spot * vol and a tanh layer -> (B, 2), so every cross block is non-zero.
    The weights are fixed by a seed for float32; copy them into a float64 build."""
    keras.utils.set_random_seed(17)
    spot = keras.Input((2,), name="spot", dtype=dtype)
    vol = keras.Input((2,), name="vol", dtype=dtype)
    rate = keras.Input((1,), name="rate", dtype=dtype)
    coupled = keras.layers.Multiply(dtype=dtype)([spot, vol])
    joined = keras.layers.Concatenate(dtype=dtype)([spot, vol, rate, coupled])
    hidden = keras.layers.Dense(5, activation="tanh", dtype=dtype)(joined)
    output = keras.layers.Dense(2, activation="softplus", dtype=dtype)(hidden)
    return keras.Model([spot, vol, rate], output)


def conv_model() -> keras.Model:
    """Conv2D on (6, 6, 1) images -> softplus -> Dense(1); D = 36."""
    keras.utils.set_random_seed(12)
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(2, 3, activation="softplus"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )


def batch_mean_model() -> keras.Model:
    """Subtracts the batch mean before a tanh layer, so examples influence each other."""
    keras.utils.set_random_seed(13)
    inputs = keras.Input((4,))
    centred = keras.layers.Lambda(lambda x: x - keras.ops.mean(x, axis=0, keepdims=True))(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, activation="tanh")(centred))


def wide_model() -> keras.Model:
    """Dense(4, tanh) -> Dense(1) on 1200 inputs: a per-example Hessian is 1200 x 1200."""
    keras.utils.set_random_seed(14)
    return keras.Sequential(
        [
            keras.Input((WIDE_INPUT_SIZE,)),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


def huge_model() -> keras.Model:
    """Dense(2, tanh) -> Dense(1) on 4096 inputs: a per-example Hessian is 67 MB."""
    keras.utils.set_random_seed(15)
    return keras.Sequential(
        [
            keras.Input((HUGE_INPUT_SIZE,)),
            keras.layers.Dense(2, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


class _Broken(keras.layers.Layer):
    """Builds fine, fails with a plain RuntimeError whenever it runs."""

    def call(self, inputs: Any) -> Any:
        raise RuntimeError("deliberate failure inside the model")

    def compute_output_spec(self, inputs: Any) -> Any:
        return keras.KerasTensor(inputs.shape, inputs.dtype)


def broken_model() -> keras.Model:
    """A model of unknown input size (so not warmed) that raises RuntimeError when called."""
    inputs = keras.Input((None,))
    return keras.Model(inputs, _Broken()(inputs))


HOLD_DIRECTORY_VARIABLE = "HESSD_TEST_HOLD_DIRECTORY"
"""Environment variable naming the directory through which a test holds :func:`held_model`'s traces."""


class _HeldUntilReleased(keras.layers.Layer):
    """tanh. When traced, it creates ``held`` in the directory named by
    :data:`HOLD_DIRECTORY_VARIABLE` and waits until ``release`` appears there
    (a test in another process holds a compile this way)."""

    def call(self, inputs: Any) -> Any:
        directory = os.environ.get(HOLD_DIRECTORY_VARIABLE)
        if directory and not tf.executing_eagerly():
            Path(directory, "held").touch()
            while not Path(directory, "release").exists():
                time.sleep(0.02)
        return tf.tanh(inputs)

    def compute_output_spec(self, inputs: Any) -> Any:
        return keras.KerasTensor(inputs.shape, inputs.dtype)


def held_model() -> keras.Model:
    """sum(tanh(x)) over inputs of unknown length (so not warmed); its compiles are held, see above."""
    inputs = keras.Input((None,))
    return keras.Model(inputs, keras.ops.sum(_HeldUntilReleased()(inputs), axis=-1, keepdims=True))


def gated_demo_model() -> keras.Model:
    """The demo model, once :data:`LOAD_GATE` is set."""
    from hessd_server.engine.demo_model import build_demo_model

    LOAD_GATE.wait()
    return build_demo_model()


def linear_model(scale: float) -> keras.Model:
    """f(x) = scale * sum(x) on 3 inputs; the output layer is named ``price``."""
    inputs = keras.Input((3,), name="x")
    price = keras.layers.Dense(
        1, use_bias=False, kernel_initializer=keras.initializers.Constant(scale), name="price"
    )(inputs)
    return keras.Model(inputs, price)


def write_version(
    repository: Path, name: str, version: int, scale: float = 1.0, *, corrupt: bool = False
) -> Path:
    """Publish version ``version`` of model ``name`` whole: written aside, then renamed in."""
    staging = repository / f".staging-{name}-{version}"
    staging.mkdir()
    if corrupt:
        (staging / "model.keras").write_bytes(b"half a keras file")
    else:
        linear_model(scale).save(staging / "model.keras")
    (repository / name).mkdir(exist_ok=True)
    target = repository / name / str(version)
    staging.rename(target)
    return target


class ManualClock:
    """A monotonic clock, in seconds, that moves only when :meth:`advance` is called."""

    def __init__(self) -> None:
        self._now = time.monotonic()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


class RunningServer:
    """A started ``HessdServer`` on its own event loop thread, for synchronous tests.

    Args:
        config: the server's settings; ``listen`` should be ``127.0.0.1:0``.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: HessdServer
        self.server, self.port = self.run(self._started(config))

    @property
    def target(self) -> str:
        """The address clients dial."""
        return f"127.0.0.1:{self.port}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = SERVER_START_TIMEOUT_S) -> T:
        """Run ``coroutine`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def wait_until_serving(self) -> None:
        self.run(self.server.wait_until_serving())

    def model(self, name: str) -> Model:
        """The server's own loaded model, for in-process reference calls."""
        return self.server.models.get(name)

    def hold_engine(self, release: threading.Event) -> None:
        """Occupy one engine thread of the batcher until ``release`` is set; returns once it is held."""
        batcher = self.server.batcher
        held = len(batcher.records)
        asyncio.run_coroutine_threadsafe(batcher.call(None, "hold", release.wait), self.loop)
        eventually(lambda: any(r.methods == ("hold",) for r in list(batcher.records)[held:]))

    @contextlib.contextmanager
    def batcher_clock(self) -> Iterator[ManualClock]:
        """The batcher measures deadlines and queue times on a :class:`ManualClock`
        inside this block; enter and leave it with nothing queued."""
        batcher = self.server.batcher
        clock = ManualClock()
        batcher.clock = clock
        try:
            yield clock
        finally:
            batcher.clock = time.monotonic

    def stop(self, grace: float = 0.0) -> None:
        self.run(self.server.stop(grace))
        self.close()

    def close(self) -> None:
        """End the server's event loop thread, once its server has stopped."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    @staticmethod
    async def _started(config: ServerConfig) -> tuple[HessdServer, int]:
        server, port = create_server(config)
        await server.start()
        return server, port


@contextlib.contextmanager
def serving(models: Sequence[tuple[str, str]] = (), **settings: Any) -> Iterator[RunningServer]:
    """A running, warm server on 127.0.0.1:0 for ``models`` (name, source); stopped on exit.

    ``settings`` are further ``ServerConfig`` fields; warmup defaults to batch size 2.
    """
    settings.setdefault("warmup_batch_sizes", (2,))
    config = ServerConfig(
        models=tuple(ModelSpec(name, source) for name, source in models),
        listen="127.0.0.1:0",
        **settings,
    )
    running = RunningServer(config)
    try:
        running.wait_until_serving()
        yield running
    finally:
        running.stop()


SHARED_MODELS: tuple[tuple[str, str], ...] = (
    ("demo", DEMO_MODEL_SOURCE),
    ("multi", "support.wire_fixtures:multi_input_model"),
    ("conv", "support.wire_fixtures:conv_model"),
    ("mixing", "support.wire_fixtures:batch_mean_model"),
    ("broken", "support.wire_fixtures:broken_model"),
    ("untraceable", "support.wire_fixtures:untraceable_model"),
    ("fails_once", "support.wire_fixtures:fails_once_model"),
    ("spot", "support.wire_fixtures:named_input_model"),
    ("pricing", "support.wire_fixtures:pricing_model"),
)
"""The models of the session's shared server (``models_server`` in ``tests/conftest.py``)."""

SHARED_MAX_RESULT_BYTES = 200_000
"""The shared server's result limit: a full Hessian of 100 demo examples is refused."""


@contextlib.contextmanager
def shared_models_server() -> Iterator[RunningServer]:
    """The server that tests which only call it share: :data:`SHARED_MODELS`, batch
    buckets up to 8, results up to :data:`SHARED_MAX_RESULT_BYTES`, warm for batches of 2.
    It does not freeze the heap: the freeze is process-wide, and a server that lives for
    the whole session would hold it under the tests of freezing
    (``tests/serving/test_garbage_collection.py``)."""
    with serving(
        SHARED_MODELS,
        max_batch_size=8,
        max_result_bytes=SHARED_MAX_RESULT_BYTES,
        freeze_heap=False,
    ) as running:
        yield running


def eventually(condition: Callable[[], bool], timeout: float = SERVER_START_TIMEOUT_S) -> None:
    """Return once ``condition()`` holds; fail after ``timeout`` seconds (a hang, not a verdict)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def console_script(name: str) -> str:
    """Path of console script ``name`` installed next to this Python."""
    return str(Path(sys.executable).with_name(name))


def rng_array(shape: tuple[int, ...], dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    """A standard normal array of ``shape`` and ``dtype``, fixed by ``seed``."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
