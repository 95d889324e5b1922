"""Benchmark how fast large results reach a caller: TCP, unix socket and shared memory.

For per-example Hessians of 1, 16 and 64 MB (D = 512, 2048, 4096 inputs, B = 1,
float32), a ``hessd-server`` child process serves the same model over loopback
TCP and over a unix socket, and ``hessd.Client`` fetches the Hessian:

* over TCP and over the unix socket, whole and with ``packing="upper"``;
* through shared memory (``shared_memory=True``), whole and packed.

The baselines move the same bytes without hessd: a bare gRPC server stream
(a Python grpc.aio server yielding the bytes in chunks of the server's chunk
size, with the same HTTP/2 settings), the same bytes as two such streams at
once on two connections (what one Python process can read in parallel), and
a memcpy (numpy copy into a buffer allocated once). Every hessd result is
first checked against the in-process ``hessd_server.hessian`` of the same
model (to the autotuner's tolerance: each server process tunes its own
strategy), and bit for bit against the same server's other calls (packed: the
whole result's upper triangle mirrored). Configurations take turns, call by call; the table gives
medians. hessd's transfer rate is the result's size over (remote median -
in-process median), the time the wire or shared memory adds.

``--sweep`` times only the bare gRPC stream of 16 MB over chunk sizes and
HTTP/2 settings: the measurement behind ``hessd.transfer_options`` and the
server's default chunk size.

Usage: ``python benchmarks/bench_transfer.py [--quick] [--sizes 1,16,64] [--markdown PATH] [--sweep]``
"""

from __future__ import annotations

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

import hessd
from hessd.transfer_options import TRANSFER_OPTIONS

from markdown_page import command_line, machine_description, publish, render_page

TITLE = "Large results: TCP, unix socket and shared memory"
SWEEP_TITLE = "Bare gRPC stream of 16.8 MB over loopback TCP, by HTTP/2 settings and chunk size"

SIZES_MB = {1: 512, 16: 2048, 64: 4096}
"""Result size in MB (10^6 bytes, rounded) -> input dimension D of the per-example Hessian."""

CHUNK_BYTES = 1 << 20
SERVER_START_S = 300.0
MAX_MESSAGE = 256 << 20
RTOL = 1e-5
"""The autotuner's agreement between strategies (hessd_server.engine.autotune.RTOL)."""


@dataclass(frozen=True)
class Row:
    """The timings of one way of moving one result."""

    size_mb: int
    method: str
    seconds: tuple[float, ...]
    nbytes: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def build_model(dim: int) -> Any:
    """Dense(4, tanh) -> Dense(1) on ``dim`` inputs: a cheap, dense per-example Hessian."""
    import keras

    keras.utils.set_random_seed(dim)
    return keras.Sequential(
        [keras.Input((dim,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def hessd_server(listen: str, models: dict[str, Path]) -> Iterator[str]:
    """A ``hessd-server`` child process serving ``models`` on ``listen``; yields the target."""
    flags = [f"--model={name}={path}" for name, path in models.items()]
    command = [
        sys.executable,
        "-m",
        "hessd_server.serving.main",
        "--listen",
        listen,
        "--warmup-batch-sizes",
        "1",
        "--max-batch-size",
        "1",
        "--chunk-bytes",
        str(CHUNK_BYTES),
        "--log-level",
        "WARNING",
        *flags,
    ]
    process = subprocess.Popen(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        with hessd.Client(listen, timeout=5) as client:
            deadline = time.monotonic() + SERVER_START_S
            while True:
                with contextlib.suppress(hessd.HessdError):
                    if client.health() == "SERVING":
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"hessd-server on {listen} did not start")
                time.sleep(0.5)
        yield listen
    finally:
        process.terminate()
        process.wait(60)


_BARE_SERVER = """
import asyncio, sys, grpc, grpc.aio
options = eval(sys.argv[2])
async def main():
    server = grpc.aio.server(options=options + [("grpc.max_send_message_length", -1)])
    cache = {}
    async def stream(request, context):
        total, chunk = (int(part) for part in request.decode().split(","))
        pieces = cache.setdefault((total, chunk), [bytes(min(chunk, total - offset))
                                                  for offset in range(0, total, chunk)])
        for piece in pieces:
            yield piece
    handler = grpc.method_handlers_generic_handler("bare.Bare", {"Stream": grpc.unary_stream_rpc_method_handler(stream)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(sys.argv[1])
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""


@contextlib.contextmanager
def bare_stream(
    options: Sequence[tuple[str, Any]], connections: int = 1
) -> Iterator[Callable[[int, int], int]]:
    """A bare grpc.aio server stream over loopback TCP; yields fetch(total, chunk) -> bytes read.

    With several ``connections``, fetch reads ``total`` as that many equal streams at
    once, one per connection, each on a thread of its own.
    """
    target = f"127.0.0.1:{_free_port()}"
    process = subprocess.Popen([sys.executable, "-c", _BARE_SERVER, target, repr(list(options))])
    channels = [
        grpc.insecure_channel(
            target,
            options=[*options, ("grpc.max_receive_message_length", -1), ("grpc.channel_id", index)],
        )
        for index in range(connections)
    ]
    pool = ThreadPoolExecutor(connections)
    try:
        calls = []
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=60)
            calls.append(channel.unary_stream("/bare.Bare/Stream"))

        def read(call: Callable[[bytes], Iterator[bytes]], total: int, chunk: int) -> int:
            return sum(len(piece) for piece in call(f"{total},{chunk}".encode()))

        def fetch(total: int, chunk: int) -> int:
            part = total // connections
            return sum(pool.map(read, calls, [part] * connections, [chunk] * connections))

        yield fetch
    finally:
        pool.shutdown()
        for channel in channels:
            channel.close()
        process.terminate()
        process.wait(60)


def take_turns(methods: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Seconds per call of every method, one call of each in turn, ``runs`` rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(runs):
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def mirrored_upper(hessian: np.ndarray) -> np.ndarray:
    """The per-example blocks' upper triangles mirrored: what packing="upper" returns."""
    return np.triu(hessian) + np.transpose(np.triu(hessian, 1), (0, 2, 1))


def check_served(served: np.ndarray, reference: np.ndarray, what: str) -> None:
    """``served`` agrees with the in-process ``reference`` as two autotuned strategies do.

    Each server process tunes its own per-example Hessian strategy, which may not be the
    benchmark process's, so agreement across processes is to the autotuner's tolerance;
    each server's results over its paths, whole and packed, are compared bit for bit.
    """
    tolerance = RTOL * (np.abs(reference) + np.abs(reference).max())
    if served.shape != reference.shape or not np.all(np.abs(served - reference) <= tolerance):
        raise AssertionError(f"{what} differs from the in-process Hessian")


def measure(sizes: Sequence[int], runs: int) -> list[Row]:
    """Check and time every way of moving each size's Hessian."""
    import hessd_server as hs

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="hessd-bench-") as directory:
        paths = {}
        for size in sizes:
            paths[f"d{SIZES_MB[size]}"] = Path(directory) / f"d{SIZES_MB[size]}.keras"
            build_model(SIZES_MB[size]).save(paths[f"d{SIZES_MB[size]}"])
        tcp_target = f"127.0.0.1:{_free_port()}"
        unix_target = f"unix://{directory}/hessd.sock"
        options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
        with (
            hessd_server(tcp_target, paths),
            hessd_server(unix_target, paths),
            bare_stream(TRANSFER_OPTIONS) as fetch_bare,
            bare_stream(TRANSFER_OPTIONS, connections=2) as fetch_bare_pair,
            hessd.Client(tcp_target, timeout=300) as tcp,
            hessd.Client(unix_target, timeout=300) as unix,
            hessd.Client(unix_target, timeout=300, shared_memory=True) as shared,
        ):
            for size in sizes:
                dim = SIZES_MB[size]
                name = f"d{dim}"
                model = hs.load_model(str(paths[name]))
                x = np.random.default_rng(dim).standard_normal((1, dim)).astype(np.float32)
                reference = hs.hessian(model, x)
                nbytes = reference.nbytes
                source = np.frombuffer(bytes(nbytes), np.uint8)
                target = np.empty_like(source)
                methods: dict[str, Callable[[], object]] = {
                    "in-process hessd_server.hessian": lambda: hs.hessian(model, x),
                    "memcpy (baseline)": lambda: np.copyto(target, source),
                    "bare gRPC stream, TCP (baseline)": lambda: fetch_bare(nbytes, CHUNK_BYTES),
                    "bare gRPC, 2 streams on 2 TCP connections (baseline)": lambda: fetch_bare_pair(
                        nbytes, CHUNK_BYTES
                    ),
                }
                for label, client in (("TCP", tcp), ("unix socket", unix), ("shared memory", shared)):
                    whole = client.hessian(name, x)
                    check_served(whole, reference, f"hessd over {label} at D={dim}")
                    expected = {"": whole, ", packed": mirrored_upper(whole)}
                    for suffix, packing in (("", "none"), (", packed", "upper")):
                        def call(client=client, packing=packing) -> np.ndarray:
                            return client.hessian(name, x, packing=packing)

                        if not np.array_equal(call(), expected[suffix]):
                            raise AssertionError(f"hessd over {label}{suffix} differs at D={dim}")
                        methods[f"hessd, {label}{suffix}"] = call
                print(f"{size} MB: timing {len(methods)} methods x {runs} runs", flush=True)
                for method, seconds in take_turns(methods, runs).items():
                    rows.append(Row(size, method, tuple(seconds), nbytes))
    return rows


def render_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table, with each hessd row's transfer rate."""
    in_process = {r.size_mb: r.median_s for r in rows if r.method.startswith("in-process")}
    lines = [
        "| result | method | median (ms) | MB/s | runs |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        seconds = row.median_s
        if row.method.startswith("hessd"):
            seconds -= in_process[row.size_mb]
        rate = "" if row.method.startswith("in-process") else _rate(row.nbytes, seconds)
        lines.append(
            f"| {row.nbytes / 1e6:.1f} MB | {row.method} | {row.median_s * 1e3:.2f} | {rate} "
            f"| {len(row.seconds)} |"
        )
    return "\n".join(lines)


TARGETS_MB_S = {"hessd, TCP": 1000, "hessd, shared memory": 4000}
"""The transfer rates the 16.8 MB result should reach, unpacked (MB/s)."""


def target_lines(rows: Sequence[Row]) -> list[str]:
    """Whether the 16.8 MB rows met :data:`TARGETS_MB_S`, and how packing compared."""
    medians = {r.method: r.median_s for r in rows if r.size_mb == 16}
    if not medians:
        return []
    in_process = medians["in-process hessd_server.hessian"]
    nbytes = next(r.nbytes for r in rows if r.size_mb == 16)
    lines = []
    for method, target in TARGETS_MB_S.items():
        added = medians[method] - in_process
        rate = nbytes / added / 1e6 if added > 0 else float("inf")
        verdict = "met" if rate >= target else "NOT met"
        lines.append(
            f"- Target: {method} >= {target:,} MB/s at 16.8 MB: {rate:,.0f} MB/s "
            f"({added * 1e3:.2f} ms above in-process), {verdict}."
        )
    for path in ("TCP", "unix socket", "shared memory"):
        whole, packed = medians[f"hessd, {path}"], medians[f"hessd, {path}, packed"]
        verdict = "not slower" if packed <= whole else "SLOWER"
        lines.append(
            f"- Packing over {path} at 16.8 MB: {packed * 1e3:.2f} ms against {whole * 1e3:.2f} ms "
            f"unpacked, {verdict}."
        )
    return lines


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:,.0f}" if seconds > 0 else "∞"


SWEEP_SETTINGS: dict[str, tuple[tuple[str, Any], ...]] = {
    "gRPC defaults": (),
    "64 MiB window": (("grpc.http2.lookahead_bytes", 64 << 20),),
    "16 MiB frames": (("grpc.http2.max_frame_size", (1 << 24) - 1),),
    "hessd.transfer_options": TRANSFER_OPTIONS,
}
SWEEP_CHUNKS = (256 << 10, 1 << 20, (4 << 20) - 1024)


def sweep(runs: int) -> str:
    """Bare-stream MB/s of 16 MB over HTTP/2 settings and chunk sizes, as a markdown table."""
    total = 2048 * 2048 * 4
    lines = [
        "| HTTP/2 settings | chunk | median (ms) | MB/s |",
        "|---|---:|---:|---:|",
    ]
    for label, options in SWEEP_SETTINGS.items():
        with bare_stream(options) as fetch:
            for chunk in SWEEP_CHUNKS:
                fetch(total, chunk)
                seconds = statistics.median(
                    take_turns({"": lambda chunk=chunk: fetch(total, chunk)}, runs)[""]
                )
                lines.append(f"| {label} | {chunk >> 10} KiB | {seconds * 1e3:.1f} | {_rate(total, seconds)} |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and with ``--markdown`` write) its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs each: a smoke test")
    parser.add_argument("--sizes", default="1,16,64", help="result sizes in MB, of 1, 16, 64")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the report as a page to PATH")
    parser.add_argument("--sweep", action="store_true", help="only the HTTP/2 settings sweep")
    parser.add_argument("--runs", type=int, default=15, help="calls of each method (default 15)")
    args = parser.parse_args(argv)
    header = machine_description()
    print("\n".join(header), flush=True)
    runs = 3 if args.quick else args.runs
    if args.sweep:
        table = sweep(runs)
        title = SWEEP_TITLE
    else:
        sizes = [int(size) for size in args.sizes.split(",")]
        rows = measure(sizes, runs)
        table = "\n".join([render_table(rows), "", *target_lines(rows)])
        title = TITLE
    page = render_page(title, header, command_line("bench_transfer.py", sys.argv[1:] if argv is None else argv), [table])
    publish(page, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
