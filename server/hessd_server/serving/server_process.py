"""Run ``hessd-server`` as a child process on a private unix socket, for jobs and tests.

>>> with ServerProcess("--warmup-batch-sizes", "4") as server:   # doctest: +SKIP
...     with hessd.Client(server.target) as client:
...         client.hessian("demo", x)
...     assert server.terminate() == 0
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import hessd

SERVER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "hessd_server.serving.main")
"""How the child is started by default: the ``hessd-server`` entry point under this Python."""


class ServerProcess:
    """A ``hessd-server`` child listening on a unix socket in a temporary directory.

    Entering starts it and waits until its health is SERVING; leaving kills it
    if it still runs. TensorFlow's C++ logging is silenced in its environment.

    Args:
        flags: further ``hessd-server`` flags; a ``--listen`` among them adds an
            address beside the socket (see :meth:`addresses`).
        command: the program to run, before the flags.
        startup_timeout: seconds to wait for SERVING.
    """

    def __init__(
        self,
        *flags: str,
        command: Sequence[str] = SERVER_COMMAND,
        startup_timeout: float = 120.0,
    ) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="hessd-")
        directory = Path(self._directory.name)
        self.target = f"unix://{directory / 'hessd.sock'}"
        """The address to dial, ``unix:///...``."""
        self._log_path = directory / "server.log"
        self._argv = [*command, "--listen", self.target, *flags]
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running child."""
        if self._process is None:
            raise RuntimeError("the server process has not been started")
        return self._process

    def output(self) -> str:
        """Everything the child wrote to stdout and stderr so far."""
        return self._log_path.read_text(errors="replace")

    def addresses(self) -> tuple[str, ...]:
        """Every address the running child listens on, as bound (a TCP port 0 replaced
        by the chosen port), its unix socket first; read from its log."""
        found = re.search(r"listening on (.+)$", self.output(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"hessd-server logged no address:\n{self.output()}")
        return tuple(found.group(1).split(", "))

    def metrics_url(self) -> str:
        """The URL of the running child's ``/metrics`` (it needs ``--metrics-port``); read
        from its log."""
        found = re.search(r"metrics on (http://\S+/metrics)", self.output())
        if found is None:
            raise RuntimeError(f"hessd-server logged no metrics endpoint:\n{self.output()}")
        return found.group(1)

    def terminate(self, timeout: float = 60.0) -> int:
        """Send SIGTERM, wait for the child to drain and exit, and return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def __enter__(self) -> ServerProcess:
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self._argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
        try:
            self._wait_until_serving()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._directory.cleanup()

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        with hessd.Client(self.target, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    status = self.process.returncode
                    raise RuntimeError(
                        f"hessd-server exited with status {status}:\n{self.output()}"
                    )
                with contextlib.suppress(hessd.UnavailableError, hessd.DeadlineExceededError):
                    if client.health() == "SERVING":
                        return
                time.sleep(0.1)
        raise TimeoutError(
            f"hessd-server was not SERVING after {self._startup_timeout:g}s:\n{self.output()}"
        )
