"""The demo job (``make run``): serve the demo model, call it through the SDK, stop cleanly.

Starts ``hessd-server`` as a child process on a unix socket, waits for health
SERVING, asks for the per-example Hessian of a small batch through
``hessd.Client``, prints its shape and a few values, then stops the server with
SIGTERM and checks that it exits 0. Exits 0 itself when all of that worked.
"""

from __future__ import annotations

import sys

import numpy as np

import hessd

from .server_config import DEMO_MODEL_NAME
from .server_process import ServerProcess

BATCH_SIZE = 4


def main() -> int:
    """Run the job; returns the process exit status."""
    print("starting hessd-server with the demo model ...", flush=True)
    with ServerProcess("--warmup-batch-sizes", str(BATCH_SIZE), "--log-level", "WARNING") as server:
        print(f"server SERVING at {server.target}", flush=True)
        with hessd.Client(server.target, timeout=60.0) as client:
            metadata = client.metadata(DEMO_MODEL_NAME)
            size = metadata.inputs[0].shape[0]
            x = np.random.default_rng(0).standard_normal((BATCH_SIZE, size)).astype(np.float32)
            hessian = client.hessian(DEMO_MODEL_NAME, x)
        print(f"Hessian of {DEMO_MODEL_NAME!r} at x {x.shape}: ", end="")
        print(f"shape {hessian.shape}, dtype {hessian.dtype}")
        print(f"H[0, :3, :3] =\n{np.array2string(hessian[0, :3, :3], precision=6)}")
        print(f"symmetric: {bool(np.allclose(hessian, hessian.transpose(0, 2, 1), atol=1e-6))}")
        status = server.terminate()
        print(f"server stopped with SIGTERM, exit status {status}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
