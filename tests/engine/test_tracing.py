"""Tracing the engine's functions: plain Python, never rewritten by AutoGraph.

The engine's traced code has no Python control flow on tensors (its loops are
``tf.while_loop``), so AutoGraph's source-to-source conversion would only cost
time: it was more than half of a cold server's warm-up. It also writes a
temporary module file per converted function, which is how this test sees
what it converted (TensorFlow's pfor converts a small wrapper of its own). A
fresh process is used, since AutoGraph caches its conversions per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import importlib, inspect, json, pkgutil, re, sys
    import keras, numpy as np
    import hessd_server as hs
    import hessd_server.engine as engine

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Add()([hidden, keras.layers.Dense(8)(inputs)])))
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    chosen = {}
    for strategy in ("pfor", "tiled", "forward_over_reverse", "structural"):
        m = hs.load_model(model, config=hs.EngineConfig(strategy=strategy))
        hs.warmup(m, [4], methods=["hessian"])
        chosen[strategy] = m.metadata().strategy
    m = hs.load_model(model)
    hs.gradient(m, x); hs.hvp(m, x, x)
    hs.hessian(m, x, full=True)
    for method in ("exact", "hutchinson", "hutch++"):
        hs.hessian_trace(m, x, method=method, probes=6, seed=0)
    hs.hessian_diagonal(m, x, method="hutchinson", seed=0)
    hs.hessian_eigen(m, x, k=2, method="lanczos", seed=0)
    hs.hessian_spectrum(m, x, probes=2, iterations=4, seed=0)
    generated = [module for name, module in sys.modules.items() if name.startswith("__autograph_generated_file")]
    sources = [open(module.__file__).read() for module in generated]
    converted = sorted({f for source in sources for f in re.findall(r"def tf__(\\w+)\\(", source)})
    names = [f"hessd_server.engine.{info.name}" for info in pkgutil.iter_modules(engine.__path__)]
    modules = [importlib.import_module(name) for name in names]
    ours = {name for module in modules for name, value in vars(module).items() if inspect.isfunction(value)}
    print(json.dumps({
        "chosen": chosen,
        "converted": converted,
        "ours": sorted(ours | {"traced", "forward", "products"}),
        "kinds": sorted({k.kind for k in m.functions}),
    }))
    """
)


def test_no_engine_function_is_converted_by_autograph() -> None:
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["chosen"] == {name: name for name in report["chosen"]}, "every strategy must have been traced"
    assert {"full_hessian", "trace/blocks", "trace/hutch++", "eigen/lanczos"} <= set(report["kinds"])
    assert "per_example_hessian" in report["ours"]
    converted_of_ours = set(report["converted"]) & set(report["ours"])
    assert converted_of_ours == set(), "TensorFlow's own pfor wrapper is the only conversion"
