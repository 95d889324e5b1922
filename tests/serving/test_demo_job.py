"""The main job (``make run``) runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # child processes that import TensorFlow are the point here


def test_demo_job_prints_the_hessian_and_stops_the_server_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hessd_server.serving.demo_job"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shape (4, 10, 10), dtype float32" in result.stdout
    assert "symmetric: True" in result.stdout
    assert "exit status 0" in result.stdout
