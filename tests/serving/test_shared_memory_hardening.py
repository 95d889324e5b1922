"""Shared memory against hostile and careless callers: a caller that knows only a
region's name cannot register it, a region that shrinks gets an error (never a
server killed by SIGBUS), inputs are sized from their header and read off the event
loop, and draining keeps registrations until the admitted calls are done."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import hessd
import hessd_server as hs
from hessd import status_codes, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc, shared_memory_pb2, shared_memory_pb2_grpc
from hessd.v1.tensor_pb2 import ResultEncoding, SharedMemoryLocation, Tensor
from hessd_server.serving.server_config import ServerConfig
from hessd_server.serving.data_plane.shared_memory import PROOF_BYTES
from test_shared_memory import CANARY, X, Registration
from support.wire_fixtures import RunningServer, eventually, rng_array, serving

WAIT_S = 60.0
NOBODY = 65534
MAX_MESSAGE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serving(max_message_bytes=MAX_MESSAGE_BYTES, chunk_bytes=1 << 16) as running:
        yield running


def _region(size: int = 4096, fill: int = CANARY) -> shared_memory.SharedMemory:
    memory = shared_memory.SharedMemory(
        name=f"hessd_test_{secrets.token_hex(6)}", create=True, size=size
    )
    assert memory.buf is not None
    memory.buf[:] = bytes([fill]) * size
    return memory


@pytest.fixture()
def region() -> Iterator[shared_memory.SharedMemory]:
    """A 4 KiB region of canary bytes, removed after the test."""
    memory = _region()
    try:
        yield memory
    finally:
        memory.close()
        memory.unlink()


def _call(target: str, method: str, request: Any) -> Any:
    with grpc.insecure_channel(target) as channel:
        try:
            return getattr(hessian_service_pb2_grpc.HessianServiceStub(channel), method)(request)
        except grpc.RpcError as error:
            raise status_codes.from_rpc_error(error) from error


def _hessian_request(
    location: SharedMemoryLocation | None = None, x: Tensor | None = None
) -> pb.HessianRequest:
    request = pb.HessianRequest(model_name="demo", x={"x": x or tensor_codec.encode(X, field="x")})
    if location is not None:
        request.result_encoding.CopyFrom(ResultEncoding(shared_memory=location))
    return request


def _in_shared_memory(array: np.ndarray, location: SharedMemoryLocation) -> Tensor:
    """A Tensor header for ``array`` whose bytes lie at ``location``."""
    tensor = tensor_codec.encode(array, field="t")
    tensor.ClearField("data")
    tensor.shared_memory.CopyFrom(location)
    return tensor


def _bytes_of(memory: shared_memory.SharedMemory) -> bytes:
    assert memory.buf is not None
    return bytes(memory.buf)


def _in_thread(call: Callable[[], Any]) -> Future[Any]:
    """``call()`` on a new thread; its result or exception, when done."""
    done: Future[Any] = Future()

    def run() -> None:
        try:
            done.set_result(call())
        except BaseException as error:  # handed to the test, which re-raises it
            done.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return done


_ATTACKER = textwrap.dedent(
    """
    import json, os, sys, grpc
    from hessd.v1 import hessian_service_pb2 as pb, hessian_service_pb2_grpc
    from hessd.v1 import shared_memory_pb2 as smpb, shared_memory_pb2_grpc
    from hessd.v1.tensor_pb2 import DataType, ResultEncoding, SharedMemoryLocation, Tensor

    target, name, user = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.setgroups([])
    os.setgid(user)
    os.setuid(user)  # from here on another user, who knows only the region's name
    outcome = {}
    try:
        open("/dev/shm/" + name, "r+b").close()
        outcome["open"] = "opened"
    except OSError as error:
        outcome["open"] = type(error).__name__

    def code(call):
        try:
            call()
            return "OK"
        except grpc.RpcError as error:
            return error.code().name

    key = bytes(16)  # what a fresh region starts with
    with grpc.insecure_channel(target) as channel:
        memory = shared_memory_pb2_grpc.SharedMemoryServiceStub(channel)
        hessians = hessian_service_pb2_grpc.HessianServiceStub(channel)
        registration = memory.RegisterSharedMemory(
            smpb.RegisterSharedMemoryRequest(name=name, size=4096, key=key)
        )
        outcome["register"] = code(lambda: next(registration))
        confirm = smpb.ConfirmSharedMemoryRequest(name=name, key=key)
        outcome["confirm"] = code(lambda: memory.ConfirmSharedMemory(confirm))
        location = SharedMemoryLocation(region=name, key=key, offset=1024)
        x = Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[2, 10], data=bytes(80))
        into = pb.HessianRequest(
            model_name="demo", x={"x": x}, result_encoding=ResultEncoding(shared_memory=location)
        )
        outcome["result_into_region"] = code(lambda: hessians.Hessian(into))
        stolen = Tensor(dtype=DataType.DATA_TYPE_FLOAT32, shape=[2, 10], shared_memory=location)
        steal = pb.HessianRequest(model_name="demo", x={"x": stolen})
        outcome["input_from_region"] = code(lambda: hessians.Hessian(steal))
        registration.cancel()
    print(json.dumps(outcome), flush=True)
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="the attacker drops to another user, which needs root")
def test_another_user_who_knows_only_the_region_name_cannot_use_it(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    name = region.name.removeprefix("/")
    client_path = str(Path(hessd.__file__).resolve().parents[1])
    attacker = subprocess.run(
        [sys.executable, "-c", _ATTACKER, server.target, name, str(NOBODY)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={"PYTHONPATH": client_path, "PATH": os.environ.get("PATH", "")},
        cwd="/",
        check=True,
    )
    outcome = json.loads(attacker.stdout)
    assert outcome == {
        "open": "PermissionError",
        "register": "OK",
        "confirm": "PERMISSION_DENIED",
        "result_into_region": "FAILED_PRECONDITION",
        "input_from_region": "FAILED_PRECONDITION",
    }
    assert _bytes_of(region) == bytes([CANARY]) * region.size
    assert server.server.shared_memory.wait_closed(WAIT_S)
    owner = Registration(server.target, region)  # the owner registers it as usual afterwards
    try:
        _call(server.target, "Hessian", _hessian_request(owner.location(offset=1024)))
    finally:
        owner.close()


def test_a_fresh_zeroed_region_is_not_usable_with_a_zero_key(server: RunningServer) -> None:
    memory = _region(fill=0)
    name, key = memory.name.removeprefix("/"), bytes(16)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = shared_memory_pb2_grpc.SharedMemoryServiceStub(channel)
            call = stub.RegisterSharedMemory(
                shared_memory_pb2.RegisterSharedMemoryRequest(name=name, size=4096, key=key)
            )
            assert len(next(call).proof) == PROOF_BYTES
            location = SharedMemoryLocation(region=name, key=key, offset=1024)
            with pytest.raises(hessd.SharedMemoryError) as unconfirmed:
                _call(server.target, "Hessian", _hessian_request(location))
            assert unconfirmed.value.reason == "SHARED_MEMORY_UNCONFIRMED"
            with pytest.raises(grpc.RpcError) as confirming:
                stub.ConfirmSharedMemory(
                    shared_memory_pb2.ConfirmSharedMemoryRequest(name=name, key=key)
                )
            refused = status_codes.from_rpc_error(confirming.value)
            assert isinstance(refused, hessd.SharedMemoryPermissionError)
            assert refused.reason == "SHARED_MEMORY_PROOF_MISMATCH"
            call.cancel()
        assert _bytes_of(memory) == bytes(memory.size)
    finally:
        memory.close()
        memory.unlink()


def test_a_region_that_group_or_others_may_write_is_refused(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    path = f"/dev/shm/{region.name.removeprefix('/')}"
    os.chmod(path, 0o620)
    name, key = region.name.removeprefix("/"), secrets.token_bytes(32)
    with grpc.insecure_channel(server.target) as channel:
        call = shared_memory_pb2_grpc.SharedMemoryServiceStub(channel).RegisterSharedMemory(
            shared_memory_pb2.RegisterSharedMemoryRequest(name=name, size=4096, key=key)
        )
        with pytest.raises(grpc.RpcError) as registering:
            next(call)
    refused = status_codes.from_rpc_error(registering.value)
    assert isinstance(refused, hessd.SharedMemoryPermissionError)
    assert refused.reason == "SHARED_MEMORY_SHARED_WRITE"
    assert server.server.shared_memory.wait_closed(WAIT_S)


def test_a_region_opened_to_group_or_others_before_its_proof_is_not_confirmed(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    name, key = region.name.removeprefix("/"), secrets.token_bytes(32)
    with grpc.insecure_channel(server.target) as channel:
        stub = shared_memory_pb2_grpc.SharedMemoryServiceStub(channel)
        call = stub.RegisterSharedMemory(
            shared_memory_pb2.RegisterSharedMemoryRequest(name=name, size=4096, key=key)
        )
        reply = next(call)
        os.chmod(f"/dev/shm/{name}", 0o606)
        assert region.buf is not None
        region.buf[reply.proof_offset : reply.proof_offset + len(reply.proof)] = reply.proof
        with pytest.raises(grpc.RpcError) as confirming:
            stub.ConfirmSharedMemory(shared_memory_pb2.ConfirmSharedMemoryRequest(name=name, key=key))
        call.cancel()
    refused = status_codes.from_rpc_error(confirming.value)
    assert refused.reason == "SHARED_MEMORY_SHARED_WRITE"
    assert server.server.shared_memory.wait_closed(WAIT_S)


def test_a_region_that_shrank_gets_an_error_and_the_server_keeps_serving(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    registration = Registration(server.target, region)
    try:
        os.ftruncate(region._fd, 64)  # type: ignore[attr-defined]  # the region's own descriptor
        with pytest.raises(hessd.SharedMemoryError) as result_refused:
            _call(server.target, "Hessian", _hessian_request(registration.location(offset=1024)))
        x = _in_shared_memory(X, registration.location(offset=1024))
        with pytest.raises(hessd.SharedMemoryError) as input_refused:
            _call(server.target, "Hessian", _hessian_request(x=x))
        assert result_refused.value.__cause__.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert result_refused.value.reason == "SHARED_MEMORY_TOO_SMALL"
        assert input_refused.value.reason == "SHARED_MEMORY_TOO_SMALL"
        assert os.fstat(region._fd).st_size == 64  # type: ignore[attr-defined]  # not grown back
        reply = _call(server.target, "Hessian", _hessian_request())
        assert np.array_equal(
            tensor_codec.decode(reply.hessian, field="hessian"), hs.hessian(server.model("demo"), X)
        )
    finally:
        registration.close()


def test_a_shared_memory_input_over_the_limit_is_refused_from_its_header(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    registration = Registration(server.target, region)
    try:
        header = _in_shared_memory(X, registration.location(offset=64))
        header.shape[:] = [MAX_MESSAGE_BYTES, 10]  # 40 MiB declared, over the limit and the region
        with pytest.raises(hessd.TensorEncodingError) as refused:
            _call(server.target, "Hessian", _hessian_request(x=header))
        assert refused.value.reason == "TENSOR_SHAPE_EXCEEDS_LIMIT"
        assert refused.value.metadata["max_bytes"] == str(MAX_MESSAGE_BYTES)
    finally:
        registration.close()


def test_a_shared_memory_input_is_read_off_the_event_loop_while_health_answers(
    server: RunningServer, region: shared_memory.SharedMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    regions = server.server.shared_memory
    reading, release = threading.Event(), threading.Event()
    readers: list[int] = []
    read = regions.read

    def held_read(*args: Any) -> np.ndarray:
        readers.append(threading.get_ident())
        reading.set()
        release.wait(WAIT_S)
        return read(*args)

    monkeypatch.setattr(regions, "read", held_read)
    registration = Registration(server.target, region)
    try:
        assert region.buf is not None
        region.buf[64 : 64 + X.nbytes] = X.tobytes()
        x = _in_shared_memory(X, registration.location(offset=64))
        reply = _in_thread(lambda: _call(server.target, "Hessian", _hessian_request(x=x)))
        assert reading.wait(WAIT_S)
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=WAIT_S
            )
        release.set()
        hessian = tensor_codec.decode(reply.result(WAIT_S).hessian, field="hessian")
    finally:
        release.set()
        registration.close()
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert readers and server.run(_loop_thread()) not in readers
    assert np.array_equal(hessian, hs.hessian(server.model("demo"), X))


def test_shared_memory_inputs_are_bounded_together_from_their_headers(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    registration = Registration(server.target, region)
    try:
        part = np.zeros((1, MAX_MESSAGE_BYTES // 4 * 3 // 4), np.float32)  # 3/4 of the limit
        request = pb.HessianRequest(model_name="demo")
        for name in ("x", "y"):
            request.x[name].CopyFrom(_in_shared_memory(part, registration.location(offset=64)))
        with pytest.raises(hessd.TensorEncodingError) as refused:
            _call(server.target, "Hessian", request)
        assert refused.value.reason == "TENSOR_SHAPE_EXCEEDS_LIMIT"
        assert "together" in refused.value.message
    finally:
        registration.close()


def test_an_hvps_v_is_bounded_together_with_x_from_their_headers(server: RunningServer) -> None:
    """Each of x and v would fit the limit and the region on its own; together they do not fit the limit."""
    region = _region(size=MAX_MESSAGE_BYTES)
    registration = Registration(server.target, region, size=MAX_MESSAGE_BYTES)
    try:
        part = np.zeros((1, MAX_MESSAGE_BYTES // 4 * 3 // 4), np.float32)  # 3/4 of the limit
        request = pb.HessianVectorProductRequest(
            model_name="demo",
            x={"x": _in_shared_memory(part, registration.location(offset=64))},
            v=_in_shared_memory(part, registration.location(offset=64)),
        )
        with pytest.raises(hessd.TensorEncodingError) as refused:
            _call(server.target, "HessianVectorProduct", request)
        assert refused.value.reason == "TENSOR_SHAPE_EXCEEDS_LIMIT"
        assert "together" in refused.value.message and ", v)" in refused.value.message  # x and v named
        assert refused.value.metadata["max_bytes"] == str(MAX_MESSAGE_BYTES)
    finally:
        registration.close()
        region.close()
        region.unlink()


async def _loop_thread() -> int:
    return threading.get_ident()


def test_v_and_output_weights_can_come_from_shared_memory(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    v = rng_array((2, 10), seed=1)
    weights = np.array([2.5], np.float32)
    registration = Registration(server.target, region)
    try:
        assert region.buf is not None
        region.buf[64 : 64 + v.nbytes] = v.tobytes()
        region.buf[512 : 512 + weights.nbytes] = weights.tobytes()
        hvp_request = pb.HessianVectorProductRequest(
            model_name="demo",
            x={"x": tensor_codec.encode(X, field="x")},
            v=_in_shared_memory(v, registration.location(offset=64)),
        )
        hvp_reply = _call(server.target, "HessianVectorProduct", hvp_request)
        weighted = _hessian_request()
        weighted.output_weights.CopyFrom(
            _in_shared_memory(weights, registration.location(offset=512))
        )
        hessian_reply = _call(server.target, "Hessian", weighted)
        hvp = tensor_codec.decode(hvp_reply.hvp, field="hvp")
        hessian = tensor_codec.decode(hessian_reply.hessian, field="hessian")
    finally:
        registration.close()
    model = server.model("demo")
    assert np.array_equal(hvp, hs.hvp(model, X, v))
    weighted_hessian = hs.hessian(model, X, output_weights=weights)
    assert np.array_equal(hessian, weighted_hessian)


def test_draining_keeps_registrations_until_admitted_calls_finish() -> None:
    config = ServerConfig(listen="127.0.0.1:0", warmup_batch_sizes=(2,), engine_threads=1)
    running = RunningServer(config)
    memory = _region()
    stopped: Future[None] | None = None
    release = threading.Event()
    registrations: list[Registration] = []
    try:
        running.wait_until_serving()
        registration = Registration(running.target, memory)
        registrations.append(registration)
        running.hold_engine(release)
        request = _hessian_request(registration.location(offset=1024))
        reply = _in_thread(lambda: _call(running.target, "Hessian", request))
        eventually(lambda: running.server.admission.in_flight == 1)
        stopped = asyncio.run_coroutine_threadsafe(running.server.stop(WAIT_S), running.loop)
        with grpc.insecure_channel(running.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            eventually(
                lambda: health.Check(health_pb2.HealthCheckRequest()).status
                == health_pb2.HealthCheckResponse.NOT_SERVING
            )
        late = _region()
        try:
            with pytest.raises(grpc.RpcError) as refused:
                Registration(running.target, late)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            late.close()
            late.unlink()
        release.set()
        assert reply.result(WAIT_S).hessian.shared_memory.offset == 1024
        assert memory.buf is not None
        got = np.frombuffer(memory.buf, np.float32, count=200, offset=1024).reshape(2, 10, 10)
        written = np.array_equal(got, hs.hessian(running.model("demo"), X))
        del got  # no view may outlive the region
        assert written
        stopped.result(WAIT_S)
        assert running.server.shared_memory.open == 0
    finally:
        release.set()
        if stopped is None:
            running.stop()
        else:
            stopped.result(WAIT_S)
            running.close()
        for registration in registrations:
            registration.close(unregister=False)
        memory.close()
        memory.unlink()
