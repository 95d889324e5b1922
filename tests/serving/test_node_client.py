"""The Node.js example client (examples/node) against a real server, bitwise against the SDK.

Needs ``node`` on the PATH and the example's pinned packages installed by
``make node-deps`` (which ``make test`` runs); the test itself runs offline, and
is skipped, saying what is missing, without them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.rpc import error_details_pb2

import hessd
from hessd import status_codes
from support.wire_fixtures import RunningServer, rng_array

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
X = rng_array((2, 10), seed=5)
NODE_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def example() -> Path:
    """The example folder, its pinned packages installed by ``make node-deps``."""
    if shutil.which("node") is None:
        pytest.skip("node is not on the PATH")
    if not (EXAMPLE / "node_modules" / ".package-lock.json").exists():
        pytest.skip("the Node example's packages are not installed; run `make node-deps`")
    return EXAMPLE


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


@pytest.fixture(scope="module")
def output(example: Path, server: RunningServer) -> dict[str, Any]:
    result = subprocess.run(
        ["node", "client.js", server.target, "demo", json.dumps(X.tolist())],
        cwd=example,
        env={**os.environ, "HESSD_PROTO_ROOT": str(PROTO_ROOT)},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _array(tensor: dict[str, Any]) -> np.ndarray:
    assert tensor["dtype"] == "DATA_TYPE_FLOAT32"
    return np.frombuffer(base64.b64decode(tensor["data"]), "<f4").reshape(tensor["shape"])


def test_node_results_are_bitwise_the_sdks(output: dict[str, Any], server: RunningServer) -> None:
    with hessd.Client(server.target) as client:
        want = client.hessian("demo", X)
    assert want.shape == (2, 10, 10)
    assert np.array_equal(_array(output["hessian"]), want)
    assert np.array_equal(_array(output["chunked"]), want)
    assert output["model_version"] == "1"
    stream = output["stream"]
    assert [reply["index"] for reply in stream] == [0, 1, 2]
    assert np.array_equal(_array(stream[0]["hessian"]), want)
    assert np.array_equal(_array(stream[2]["hessian"]), want)


def test_node_reads_the_same_error_details_as_the_sdk(
    output: dict[str, Any], server: RunningServer
) -> None:
    with hessd.Client(server.target) as client, pytest.raises(hessd.HessdError) as raised:
        client.hessian("demo", np.array([[1, 2, 3]], np.float32))
    status = status_codes.to_status(raised.value)
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    for error in (output["error"], output["stream"][1]["error"]):
        assert error["code"] == status.code and error["message"] == status.message
        error_info = next(d for d in error["details"] if d["type"] == "google.rpc.ErrorInfo")
        assert (error_info["reason"], error_info["domain"]) == (info.reason, info.domain)
        bad_request = next(d for d in error["details"] if d["type"] == "google.rpc.BadRequest")
        assert bad_request["field_violations"][0]["field"] == raised.value.field
