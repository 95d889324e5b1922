"""Curvature of a 64×64×3 image model (D = 12,288), where one dense
per-example Hessian block would take 600 MB: computed matrix-free, in a
fresh process whose peak memory is measured."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # child processes that import TensorFlow are the point here

DENSE_BLOCK_BYTES = 12_288**2 * 4
GROWTH_LIMIT_BYTES = 300 * 2**20
"""Half of one dense block; the matrix-free paths need a fraction of it."""

_SCRIPT = textwrap.dedent(
    """
    import json, resource
    import keras, numpy as np
    import hessd_server as hs

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64, 64, 3)),
        keras.layers.Conv2D(4, 3, strides=2, activation="softplus"),
        keras.layers.Conv2D(4, 3, strides=2, activation="tanh"),
        keras.layers.Flatten(),
        keras.layers.Dense(1),
    ])
    m = hs.load_model(model)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    hs.gradient(m, x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trace = hs.hessian_trace(m, x, seed=0)
    eigen = hs.hessian_eigen(m, x, k=3, seed=0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    v = eigen.eigenvectors.reshape(2 * 3, 64, 64, 3)
    hv = hs.hvp(m, np.repeat(x, 3, axis=0), v).reshape(2, 3, -1)
    print(json.dumps({
        "growth": after - before,
        "kinds": sorted(key.kind for key in m.functions),
        "trace": trace.trace.tolist(),
        "stderr": trace.stderr.tolist(),
        "eigenvalues": eigen.eigenvalues.tolist(),
        "residuals": eigen.residuals.tolist(),
        "hvp_residuals": np.linalg.norm(hv - eigen.eigenvalues[..., None] * eigen.eigenvectors.reshape(2, 3, -1), axis=-1).tolist(),
    }))
    """
)


def test_trace_and_top_eigenpairs_of_a_12288_dimensional_input_stay_small() -> None:
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["growth"] < GROWTH_LIMIT_BYTES < DENSE_BLOCK_BYTES
    assert {"trace/hutch++", "eigen/lanczos"} <= set(report["kinds"]), "auto must go matrix-free at this size"
    assert all(s > 0 for s in report["stderr"])
    eigenvalues = report["eigenvalues"]
    for values, residuals, checked in zip(eigenvalues, report["residuals"], report["hvp_residuals"]):
        assert values == sorted(values, reverse=True)
        assert max(residuals) < 1e-3 * abs(values[0])
        assert max(checked) < 1e-3 * abs(values[0])
