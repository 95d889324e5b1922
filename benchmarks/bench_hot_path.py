"""Where the time of one small call goes: each step of a per-example Hessian of
the ``mid`` MLP at B=1, timed on its own in one process, in turns.

Steps: the client encodes the request; the server decodes it; the engine
checks it; the compiled function runs (including the conversion of its
arguments to tensors); its results become NumPy arrays; the server encodes
the reply; the client decodes it. Also the whole library call, and, for
reference, what the wire itself takes is measured by ``bench_wire.py``'s echo.

Usage: ``python benchmarks/bench_hot_path.py [--seconds S]``
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence

import numpy as np

import hessd_server as hs
from hessd import tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd_server.engine import compiled, execution

from bench_methods import MID_DIM, build_mid
from bench_wire import take_turns


def steps() -> dict[str, Callable[[], object]]:
    """Each step of one small call, ready to time."""
    model = hs.load_model(build_mid())
    x = np.random.default_rng(0).standard_normal((1, MID_DIM)).astype(np.float32)
    hessian = hs.hessian(model, x)
    key = next(k for k in model.functions if k.kind == "hessian" and k.batch == 1)
    inputs, weights = execution.prepare(model, {"x": x}, None, None, None)
    args = (inputs.x, {}, weights)
    outputs = compiled.run(model, key, args)
    request = pb.HessianRequest(model_name="mid", x={"x": tensor_codec.encode(x, field="x")}).SerializeToString()
    reply = pb.HessianResponse(hessian=tensor_codec.encode(hessian, field="hessian")).SerializeToString()

    def check() -> None:
        checked, _ = execution.prepare(model, {"x": x}, None, None, None)
        execution.check_hessian_size(model, checked, False, "Hessian")

    return {
        "client: encode the request": lambda: pb.HessianRequest(
            model_name="mid", x={"x": tensor_codec.encode(x, field="x")}
        ).SerializeToString(),
        "server: decode the request": lambda: tensor_codec.decode(pb.HessianRequest.FromString(request).x["x"], field="x"),
        "engine: check the request": check,
        "engine: compiled call": lambda: compiled.run(model, key, args),
        "engine: results to NumPy": lambda: [t.numpy() for t in outputs],
        "server: encode the reply": lambda: pb.HessianResponse(
            hessian=tensor_codec.encode(hessian, field="hessian")
        ).SerializeToString(),
        "client: decode the reply": lambda: tensor_codec.decode(pb.HessianResponse.FromString(reply).hessian, field="hessian"),
        "the whole library call `hs.hessian`": lambda: hs.hessian(model, x),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of calls per step (default %(default)s)")
    args = parser.parse_args(argv)
    runs = take_turns(steps(), args.seconds, slice_s=0.05)
    print("| step | median (µs) |\n|---|---:|")
    for name, times in runs.items():
        print(f"| {name} | {statistics.median(times) * 1e6:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
