"""The curvature RPCs return exactly what the library returns in-process (bit
for bit with the same seed), fail the same way, fill unset options with the
library's defaults, refuse hostile options INVALID_ARGUMENT, and stop a long
estimator at its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import hessd
import hessd_server as hs
from hessd import curvature_options, errors, tensor_codec
from hessd.results import Diagonal, Eigen, Spectrum, Trace
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from support.wire_fixtures import RUN_GATE, RunningServer, eventually, rng_array, serving


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[hessd.Client]:
    with hessd.Client(server.target, timeout=120) as sdk:
        yield sdk


class _Library:
    """The library with the SDK's call shape: a model name resolves to the server's model."""

    def __init__(self, server: RunningServer) -> None:
        self._server = server

    def __getattr__(self, method: str) -> Callable[..., Any]:
        function = getattr(hs, method)
        return lambda model, *args, **kwargs: function(self._server.model(model), *args, **kwargs)


X = {"demo": rng_array((3, 10)), "conv": rng_array((2, 6, 6, 1), seed=1)}

CALLS: dict[str, tuple[type, Callable[[Any, str, Any], Any]]] = {
    "diagonal-hutchinson": (
        Diagonal,
        lambda api, m, x: api.hessian_diagonal(m, x, method="hutchinson", probes=12, seed=5),
    ),
    "diagonal-exact": (Diagonal, lambda api, m, x: api.hessian_diagonal(m, x, method="exact")),
    "trace-hutch++": (Trace, lambda api, m, x: api.hessian_trace(m, x, method="hutch++", probes=9, seed=6)),
    "trace-float64": (
        Trace,
        lambda api, m, x: api.hessian_trace(m, x, method="hutchinson", probes=4, seed=6, precision="float64"),
    ),
    "eigen-lanczos": (
        Eigen,
        lambda api, m, x: api.hessian_eigen(m, x, k=2, which="largest_magnitude", method="lanczos", seed=7),
    ),
    "spectrum": (Spectrum, lambda api, m, x: api.hessian_spectrum(m, x, probes=3, iterations=5, seed=8)),
}


def _assert_identical(remote: Any, local: Any) -> None:
    assert type(remote) is type(local)
    for remote_part, local_part in zip(remote, local, strict=True):
        assert remote_part.dtype == local_part.dtype and remote_part.shape == local_part.shape
        assert np.array_equal(remote_part, local_part, equal_nan=True)


@pytest.mark.parametrize(
    ("model", "call"),
    [("demo", call) for call in CALLS] + [("conv", "trace-hutch++"), ("conv", "eigen-lanczos")],
)
def test_every_curvature_call_matches_the_library_bit_for_bit(
    server: RunningServer, client: hessd.Client, model: str, call: str
) -> None:
    result_type, function = CALLS[call]
    remote = function(client, model, X[model])
    assert isinstance(remote, result_type)
    _assert_identical(remote, function(_Library(server), model, X[model]))


def test_async_client_and_versions(server: RunningServer) -> None:
    x = X["demo"]

    async def calls() -> list[Any]:
        async with hessd.AsyncClient(server.target, timeout=120) as client:
            return [await function(client, "demo", x) for _, function in CALLS.values()] + [
                await client.hessian_trace("demo", x, seed=1, with_version=True)
            ]

    remote = asyncio.run(calls())
    for (_, function), result in zip(CALLS.values(), remote, strict=False):
        _assert_identical(result, function(_Library(server), "demo", x))
    versioned = remote[-1]
    assert isinstance(versioned, hessd.Versioned) and versioned.model_version == "1"
    _assert_identical(versioned.result, hs.hessian_trace(server.model("demo"), x, seed=1))


def test_unset_options_take_the_library_defaults(server: RunningServer) -> None:
    x = X["demo"]
    encoded = {"x": tensor_codec.encode(x, field="x")}
    with grpc.insecure_channel(server.target) as channel:
        stub = hessian_service_pb2_grpc.HessianServiceStub(channel)
        trace = stub.HessianTrace(pb.HessianTraceRequest(model_name="demo", x=encoded, seed=3))
        eigen = stub.HessianEigen(pb.HessianEigenRequest(model_name="demo", x=encoded, seed=3))
        spectrum = stub.HessianSpectrum(pb.HessianSpectrumRequest(model_name="demo", x=encoded, seed=3))
        with pytest.raises(grpc.RpcError) as raised:
            stub.HessianEigen(pb.HessianEigenRequest(model_name="demo", x=encoded, k=0))
    model = server.model("demo")
    _assert_identical(hessd._protocol.curvature_from(trace, Trace), hs.hessian_trace(model, x, seed=3))
    _assert_identical(hessd._protocol.curvature_from(eigen, Eigen), hs.hessian_eigen(model, x, seed=3))
    _assert_identical(
        hessd._protocol.curvature_from(spectrum, Spectrum), hs.hessian_spectrum(model, x, seed=3)
    )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(raised.value)
    assert status is not None and "k must be" in status.message


BAD_CALLS: dict[str, tuple[str, Callable[[Any, str], Any], type[errors.HessdError], str | None]] = {
    "k-zero": ("demo", lambda api, m: api.hessian_eigen(m, X["demo"], k=0), errors.InvalidArgumentError, "k"),
    "k-above-d": ("demo", lambda api, m: api.hessian_eigen(m, X["demo"], k=11), errors.InvalidArgumentError, "k"),
    "which": (
        "demo",
        lambda api, m: api.hessian_eigen(m, X["demo"], which="top"),
        errors.InvalidArgumentError,
        "which",
    ),
    "method": (
        "demo",
        lambda api, m: api.hessian_diagonal(m, X["demo"], method="hutch++"),
        errors.InvalidArgumentError,
        "method",
    ),
    "probes": ("demo", lambda api, m: api.hessian_trace(m, X["demo"], probes=0), errors.InvalidArgumentError, "probes"),
    "seed": ("demo", lambda api, m: api.hessian_trace(m, X["demo"], seed=-1), errors.InvalidArgumentError, "seed"),
    "tol": ("demo", lambda api, m: api.hessian_eigen(m, X["demo"], tol=-1.0), errors.InvalidArgumentError, "tol"),
    "shape": ("demo", lambda api, m: api.hessian_trace(m, X["demo"][:, :3]), errors.ShapeError, "x[x]"),
    "mixing": (
        "mixing",
        lambda api, m: api.hessian_spectrum(m, rng_array((2, 4))),
        errors.BatchDependenceError,
        None,
    ),
    "too-large": (
        "demo",
        lambda api, m: api.hessian_spectrum(m, X["demo"], probes=1000, iterations=10),
        errors.ResultTooLargeError,
        None,
    ),
    "too-many-products": (
        "demo",
        lambda api, m: api.hessian_trace(
            m, rng_array((32, 10)), method="hutchinson", probes=curvature_options.MAX_PROBES
        ),
        errors.InvalidArgumentError,
        "probes",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_same_exception_in_process_and_over_the_wire(
    server: RunningServer, client: hessd.Client, case: str
) -> None:
    model, call, error_type, field = BAD_CALLS[case]
    compiled = server.model(model).metadata().compile_count
    with pytest.raises(errors.HessdError) as local:
        call(_Library(server), model)
    with pytest.raises(errors.HessdError) as remote:
        call(client, model)
    assert type(local.value) is type(remote.value) is error_type
    assert local.value.field == remote.value.field == field
    option = error_type is errors.InvalidArgumentError
    reason = "CURVATURE_OPTION_INVALID" if option else error_type.default_reason
    assert local.value.reason == remote.value.reason == reason
    assert remote.value.message == local.value.message
    assert server.model(model).metadata().compile_count == compiled


def test_the_memory_budget_is_a_server_flag() -> None:
    from hessd_server.serving.main import parse_config

    config = parse_config(["--curvature-memory-bytes", "4096"])
    assert config.engine_config().curvature_memory_bytes == 4096
    assert parse_config([]).engine_config().curvature_memory_bytes == hs.EngineConfig().curvature_memory_bytes


def test_the_product_budget_is_a_server_flag() -> None:
    from hessd_server.serving.main import parse_config

    assert parse_config(["--max-curvature-products", "4096"]).engine_config().max_curvature_products == 4096
    default = parse_config([]).engine_config().max_curvature_products
    assert default == hs.EngineConfig().max_curvature_products == curvature_options.MAX_CURVATURE_PRODUCTS
    with pytest.raises(SystemExit):
        parse_config(["--max-curvature-products", "0"])


PRODUCT_BUDGET = 2 * curvature_options.MAX_CURVATURE_PRODUCTS
"""The ``one_engine_thread`` server's product budget: above the default, which the SDK must not apply."""


@pytest.fixture(scope="module")
def one_engine_thread() -> Iterator[RunningServer]:
    """A server with one engine thread, a 1 MiB curvature memory budget and a product
    budget of :data:`PRODUCT_BUDGET`."""
    with serving(
        [("demo", hs.DEMO_MODEL_SOURCE)],
        engine_threads=1,
        curvature_memory_bytes=1 << 20,
        max_curvature_products=PRODUCT_BUDGET,
    ) as running:
        yield running


HUGE = (2**31 - 1, 2**63 - 1)
HOSTILE_OPTIONS: list[tuple[str, type, dict[str, Any]]] = [
    *[("HessianTrace", pb.HessianTraceRequest, {"method": "hutchinson", "probes": v}) for v in (0, -(2**63), *HUGE)],
    *[("HessianTrace", pb.HessianTraceRequest, {"method": "hutch++", "probes": v}) for v in (2, 2**20)],
    *[("HessianDiagonal", pb.HessianDiagonalRequest, {"method": "hutchinson", "probes": v}) for v in (0, -1, *HUGE)],
    *[("HessianEigen", pb.HessianEigenRequest, {"k": v}) for v in (0, -1, 11, *HUGE)],
    *[("HessianEigen", pb.HessianEigenRequest, {"k": 2, "iterations": v}) for v in (1, -1, *HUGE)],
    *[("HessianEigen", pb.HessianEigenRequest, {"tol": v}) for v in (float("nan"), float("inf"), -float("inf"), -1.0)],
    *[("HessianEigen", pb.HessianEigenRequest, {"which": v, "method": "lanczos"}) for v in ("", "x" * 10_000)],
    *[("HessianSpectrum", pb.HessianSpectrumRequest, {"probes": v}) for v in (0, -1, *HUGE)],
    *[("HessianSpectrum", pb.HessianSpectrumRequest, {"iterations": v}) for v in (0, -1, *HUGE)],
    ("HessianSpectrum", pb.HessianSpectrumRequest, {"probes": 4096, "iterations": 10}),
]


WIDE_X = rng_array((64, 10))
OVER_PRODUCTS: list[tuple[str, type, dict[str, Any], int]] = [
    # (method, request, options, the products they take at WIDE_X's B = 64), each over PRODUCT_BUDGET
    ("HessianTrace", pb.HessianTraceRequest, {"method": "hutchinson", "probes": 1 << 20}, 64 << 20),
    ("HessianTrace", pb.HessianTraceRequest, {"method": "hutch++", "probes": 1 << 20}, 64 << 20),
    ("HessianDiagonal", pb.HessianDiagonalRequest, {"method": "hutchinson", "probes": 1 << 20}, 64 << 20),
    ("HessianSpectrum", pb.HessianSpectrumRequest, {"probes": 1 << 17, "iterations": 100}, 64 * 10 << 17),
]


def _error_info(status: Any) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo among a ``google.rpc.Status``'s details."""
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1
    return infos[0]


def _reasons(status: Any) -> list[str]:
    """The ErrorInfo reasons among a ``google.rpc.Status``'s details."""
    reasons = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reasons.append(info.reason)
    return reasons


def test_hostile_options_are_invalid_argument_and_the_server_keeps_serving(one_engine_thread: RunningServer) -> None:
    x = rng_array((3, 10))
    encoded = {"x": tensor_codec.encode(x, field="x")}
    model = one_engine_thread.model("demo")
    compiled = model.metadata().compile_count
    with grpc.insecure_channel(one_engine_thread.target) as channel:
        stub = hessian_service_pb2_grpc.HessianServiceStub(channel)
        for method, request_type, options in HOSTILE_OPTIONS:
            with pytest.raises(grpc.RpcError) as raised:
                getattr(stub, method)(request_type(model_name="demo", x=encoded, **options), timeout=60)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, options)
            status = rpc_status.from_call(raised.value)
            assert status is not None and len(status.message) < 600
            assert _reasons(status) == ["CURVATURE_OPTION_INVALID"], (method, options)
    assert model.metadata().compile_count == compiled
    with hessd.Client(one_engine_thread.target, timeout=120) as client:
        assert client.health() == "SERVING"
        _assert_identical(client.hessian_trace("demo", x, seed=2), hs.hessian_trace(model, x, seed=2))


def test_requests_over_the_servers_product_budget_are_refused_naming_it(one_engine_thread: RunningServer) -> None:
    encoded = {"x": tensor_codec.encode(WIDE_X, field="x")}
    model = one_engine_thread.model("demo")
    compiled = model.metadata().compile_count
    with grpc.insecure_channel(one_engine_thread.target) as channel:
        stub = hessian_service_pb2_grpc.HessianServiceStub(channel)
        for method, request_type, options, products in OVER_PRODUCTS:
            with pytest.raises(grpc.RpcError) as raised:
                getattr(stub, method)(request_type(model_name="demo", x=encoded, **options), timeout=60)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, options)
            status = rpc_status.from_call(raised.value)
            assert status is not None
            info = _error_info(status)
            assert info.reason == "CURVATURE_OPTION_INVALID", (method, options)
            assert info.metadata["products"] == str(products), (method, options)
            assert info.metadata["max_curvature_products"] == str(PRODUCT_BUDGET)
            assert f"{products:,} Hessian-vector products" in status.message
            assert f"limit of {PRODUCT_BUDGET:,}" in status.message and "fewer probes" in status.message
    assert model.metadata().compile_count == compiled


def test_the_sdk_leaves_the_product_budget_to_the_server(one_engine_thread: RunningServer) -> None:
    """Over the default budget but within this server's: the SDK sends it, and the server
    refuses it for its memory instead; over this server's, the SDK raises what the library
    raises in-process with the server's settings."""
    model = one_engine_thread.model("demo")
    probes = curvature_options.MAX_PROBES
    x = rng_array((32, 10))
    assert curvature_options.MAX_CURVATURE_PRODUCTS < probes * 32 <= PRODUCT_BUDGET
    with hessd.Client(one_engine_thread.target, timeout=120) as client:
        with pytest.raises(errors.InvalidArgumentError) as refused:
            client.hessian_trace("demo", x, method="hutch++", probes=probes)
        assert set(refused.value.metadata) == {"value", "memory_bytes", "curvature_memory_bytes"}
        with pytest.raises(errors.InvalidArgumentError) as remote:
            client.hessian_trace("demo", WIDE_X, method="hutchinson", probes=probes)
    with pytest.raises(errors.InvalidArgumentError) as local:
        hs.hessian_trace(model, WIDE_X, method="hutchinson", probes=probes)
    assert remote.value.message == local.value.message and remote.value.metadata == local.value.metadata
    assert remote.value.metadata["max_curvature_products"] == str(PRODUCT_BUDGET)


RUNS_CHUNK = 8
"""Products per example in each compiled call of the ``gated_runs`` server's estimators."""

RUNS_X = rng_array((3, 12))


@pytest.fixture(scope="module")
def gated_runs() -> Iterator[RunningServer]:
    """One engine thread and graph mode, for a model whose every compiled call passes
    ``RUN_GATE``; its memory budget makes Hutchinson's chunks :data:`RUNS_CHUNK` products
    per example at RUNS_X's batch (padded to 4, D = 12, float32)."""
    vector_bytes = 4 * 12 * 4
    budget = RUNS_CHUNK * 16 * vector_bytes  # room for 8 products per example, 16 vectors' memory each
    with serving(
        [("gated_runs", "support.wire_fixtures:gated_runs_model")],
        engine_threads=1,
        jit_compile=False,
        curvature_memory_bytes=budget,
        warmup_methods=("gradient",),
    ) as running:
        yield running


def _engine_calls_ended(server: RunningServer) -> float:
    return server.server.metrics.registry.get_sample_value("hessd_engine_call_duration_seconds_count") or 0.0


def _abandoned(server: RunningServer) -> dict[str, float]:
    registry = server.server.metrics.registry
    return {
        reason: registry.get_sample_value("hessd_abandoned_engine_calls_total", {"reason": reason}) or 0.0
        for reason in ("deadline", "cancelled")
    }


def test_a_long_estimator_stops_at_the_chunk_its_deadline_passes_in(gated_runs: RunningServer) -> None:
    """The first compiled call of a 200-chunk estimate is held until the caller's deadline
    has ended the call; once let go, that chunk is the only one that runs."""

    def trace(client: hessd.Client, probes: int) -> Trace:
        return client.hessian_trace("gated_runs", RUNS_X, method="hutchinson", probes=probes, seed=0)

    with hessd.Client(gated_runs.target, timeout=120) as client:
        trace(client, RUNS_CHUNK)  # compiles the chunk
        before = RUN_GATE.runs
        trace(client, RUNS_CHUNK)
        per_chunk = RUN_GATE.runs - before
    assert per_chunk >= 1
    abandoned, ended = _abandoned(gated_runs), _engine_calls_ended(gated_runs)
    RUN_GATE.reset()
    started = RUN_GATE.runs
    RUN_GATE.armed = True
    try:
        with hessd.Client(gated_runs.target, timeout=2) as hasty, pytest.raises(errors.DeadlineExceededError):
            trace(hasty, 200 * RUNS_CHUNK)
        assert RUN_GATE.entered.is_set(), "the estimate never reached the engine"
        eventually(lambda: sum(_abandoned(gated_runs).values()) == sum(abandoned.values()) + 1)
    finally:
        RUN_GATE.armed = False
        RUN_GATE.opened.set()
    eventually(lambda: _engine_calls_ended(gated_runs) == ended + 1)
    assert RUN_GATE.runs - started == per_chunk, "chunks ran after the call's deadline"
    assert _abandoned(gated_runs) == {"deadline": abandoned["deadline"] + 1, "cancelled": abandoned["cancelled"]}
    model = gated_runs.model("gated_runs")
    with hessd.Client(gated_runs.target, timeout=120) as client:
        _assert_identical(
            trace(client, 2 * RUNS_CHUNK),
            hs.hessian_trace(model, RUNS_X, method="hutchinson", probes=2 * RUNS_CHUNK, seed=0),
        )
