"""Shared memory: registration and use are checked before any byte is touched, regions
live as long as their registration call, and the SDK falls back to the wire when refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd import status_codes, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc, shared_memory_pb2, shared_memory_pb2_grpc
from hessd.v1.tensor_pb2 import ResultEncoding, SharedMemoryLocation
from hessd_server.serving.server_config import ServerConfig
from hessd_server.serving.data_plane.shared_memory import PROOF_BYTES
from hessd_server.serving.grpc.shared_memory_service import is_local_peer
from support.wire_fixtures import RunningServer, rng_array, serving

X = rng_array((2, 10))
HESSIAN_BYTES = 2 * 10 * 10 * 4
CANARY = 0xA5
UNMAP_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serving(max_shared_memory_bytes=1 << 20, max_shared_memory_regions=8) as running:
        yield running


@pytest.fixture()
def region() -> Iterator[shared_memory.SharedMemory]:
    """A 4 KiB region filled with the canary byte, removed after the test."""
    memory = shared_memory.SharedMemory(
        name=f"hessd_test_{secrets.token_hex(6)}", create=True, size=4096
    )
    assert memory.buf is not None
    memory.buf[:] = bytes([CANARY]) * memory.size
    try:
        yield memory
    finally:
        memory.close()
        memory.unlink()


class Registration:
    """One RegisterSharedMemory call over its own channel, proven and confirmed
    (the proof overwrites the first :data:`PROOF_BYTES` bytes of the region)."""

    def __init__(self, target: str, memory: shared_memory.SharedMemory, size: int = 4096) -> None:
        self.key = secrets.token_bytes(32)
        self.name = memory.name.removeprefix("/")
        self.channel = grpc.insecure_channel(target)
        self.stub = shared_memory_pb2_grpc.SharedMemoryServiceStub(self.channel)
        self.call = self.stub.RegisterSharedMemory(
            shared_memory_pb2.RegisterSharedMemoryRequest(name=self.name, size=size, key=self.key)
        )
        self.reply = next(self.call)
        assert memory.buf is not None
        start = self.reply.proof_offset
        memory.buf[start : start + len(self.reply.proof)] = self.reply.proof
        self.stub.ConfirmSharedMemory(
            shared_memory_pb2.ConfirmSharedMemoryRequest(name=self.name, key=self.key)
        )

    def location(self, offset: int = 0, key: bytes | None = None) -> SharedMemoryLocation:
        return SharedMemoryLocation(region=self.name, key=self.key if key is None else key, offset=offset)

    def close(self, *, unregister: bool = True) -> None:
        """Unregister (unless told not to, or done already), then close the channel."""
        if unregister:
            request = shared_memory_pb2.UnregisterSharedMemoryRequest(name=self.name, key=self.key)
            with contextlib.suppress(grpc.RpcError):
                self.stub.UnregisterSharedMemory(request)
        self.channel.close()


def _register(target: str, name: str, size: int, key: bytes) -> None:
    """Register and confirm ``name`` without writing the proof into it (as a caller
    that knows the name but cannot write the region would)."""
    with grpc.insecure_channel(target) as channel:
        stub = shared_memory_pb2_grpc.SharedMemoryServiceStub(channel)
        call = stub.RegisterSharedMemory(
            shared_memory_pb2.RegisterSharedMemoryRequest(name=name, size=size, key=key)
        )
        try:
            next(call)
            stub.ConfirmSharedMemory(shared_memory_pb2.ConfirmSharedMemoryRequest(name=name, key=key))
        except grpc.RpcError as error:
            raise status_codes.from_rpc_error(error) from error


def _hessian_into(target: str, location: SharedMemoryLocation) -> pb.HessianResponse:
    request = pb.HessianRequest(
        model_name="demo",
        x={"x": tensor_codec.encode(X, field="x")},
        result_encoding=ResultEncoding(shared_memory=location),
    )
    with grpc.insecure_channel(target) as channel:
        try:
            return hessian_service_pb2_grpc.HessianServiceStub(channel).Hessian(request)
        except grpc.RpcError as error:
            raise status_codes.from_rpc_error(error) from error


def _canary_intact(memory: shared_memory.SharedMemory, start: int, end: int) -> bool:
    """Whether every byte outside [start, end) still holds the canary (the proof aside)."""
    assert memory.buf is not None
    data = np.frombuffer(memory.buf, np.uint8)
    intact = bool(np.all(data[PROOF_BYTES:start] == CANARY) and np.all(data[end:] == CANARY))
    del data
    return intact


def test_result_is_written_inside_its_slot_and_nowhere_else(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    registration = Registration(server.target, region)
    try:
        reply = _hessian_into(server.target, registration.location(offset=1000))
    finally:
        registration.close()
    assert reply.hessian.shared_memory.offset == 1000 and not reply.hessian.data
    assert region.buf is not None
    got = np.frombuffer(region.buf, np.float32, count=200, offset=1000).reshape(2, 10, 10).copy()
    assert np.array_equal(got, hs.hessian(server.model("demo"), X))
    assert _canary_intact(region, 1000, 1000 + HESSIAN_BYTES)


@pytest.mark.parametrize(
    ("location", "error"),
    [
        (dict(offset=4096 - HESSIAN_BYTES + 1), hessd.InvalidSharedMemoryError),
        (dict(offset=2**63), hessd.InvalidSharedMemoryError),
        (dict(key=b"x" * 32), hessd.SharedMemoryPermissionError),
        (dict(region="hessd_never_registered"), hessd.SharedMemoryNotFoundError),
    ],
)
def test_misused_locations_fail_cleanly_and_touch_nothing(
    server: RunningServer, region: shared_memory.SharedMemory, location: dict, error: type
) -> None:
    registration = Registration(server.target, region)
    try:
        target = registration.location()
        for name, value in location.items():
            setattr(target, name, value)
        with pytest.raises(error):
            _hessian_into(server.target, target)
        assert _canary_intact(region, 32, 32)
        assert server.model("demo") is not None
        _hessian_into(server.target, registration.location())  # the region still serves
    finally:
        registration.close()


def test_a_region_of_another_client_is_refused(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    owner = Registration(server.target, region)
    try:
        with pytest.raises(hessd.SharedMemoryPermissionError):
            _hessian_into(server.target, owner.location(key=secrets.token_bytes(32)))
        with pytest.raises(hessd.SharedMemoryExistsError):
            _register(server.target, owner.name, 64, secrets.token_bytes(32))
        assert _canary_intact(region, 32, 32)
    finally:
        owner.close()


@pytest.mark.parametrize(
    ("name", "size", "key", "error"),
    [
        ("../etc/passwd", 64, b"k" * 32, hessd.InvalidSharedMemoryError),
        ("", 64, b"k" * 32, hessd.InvalidSharedMemoryError),
        ("REGION", 0, b"k" * 32, hessd.InvalidSharedMemoryError),
        ("REGION", 4097, b"k" * 32, hessd.InvalidSharedMemoryError),
        ("REGION", (1 << 20) + 1, b"k" * 32, hessd.InvalidSharedMemoryError),
        ("REGION", 64, b"short", hessd.InvalidSharedMemoryError),
        ("REGION", 64, b"k" * 32, hessd.SharedMemoryPermissionError),
        ("hessd_no_such_region", 64, b"k" * 32, hessd.SharedMemoryNotFoundError),
    ],
)
def test_bad_registrations_fail_cleanly(
    server: RunningServer,
    region: shared_memory.SharedMemory,
    name: str,
    size: int,
    key: bytes,
    error: type,
) -> None:
    with pytest.raises(error):
        _register(server.target, name.replace("REGION", region.name.removeprefix("/")), size, key)
    assert server.server.shared_memory.wait_closed(UNMAP_TIMEOUT_S)
    assert _canary_intact(region, 0, 0)


def test_inputs_can_come_from_shared_memory(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    registration = Registration(server.target, region)
    try:
        assert region.buf is not None
        region.buf[64 : 64 + X.nbytes] = X.tobytes()
        x = tensor_codec.encode(np.empty((2, 10), np.float32), field="x")
        x.ClearField("data")
        x.shared_memory.CopyFrom(registration.location(offset=64))
        request = pb.HessianRequest(model_name="demo", x={"x": x})
        with grpc.insecure_channel(server.target) as channel:
            reply = hessian_service_pb2_grpc.HessianServiceStub(channel).Hessian(request)
    finally:
        registration.close()
    assert np.array_equal(
        tensor_codec.decode(reply.hessian, field="hessian"), hs.hessian(server.model("demo"), X)
    )


def test_unregistering_unmaps_and_ends_the_registration_call(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    registration = Registration(server.target, region)
    try:
        registration.stub.UnregisterSharedMemory(
            shared_memory_pb2.UnregisterSharedMemoryRequest(
                name=registration.name, key=registration.key
            )
        )
        assert list(registration.call) == []
        assert server.server.shared_memory.open == 0
        with pytest.raises(hessd.SharedMemoryNotFoundError):
            _hessian_into(server.target, registration.location())
    finally:
        registration.close()


def test_a_closed_channel_ends_its_registrations(
    server: RunningServer, region: shared_memory.SharedMemory
) -> None:
    Registration(server.target, region).close(unregister=False)
    assert server.server.shared_memory.wait_closed(UNMAP_TIMEOUT_S)
    assert server.server.shared_memory.names == []


_DYING_CLIENT = textwrap.dedent(
    """
    import os, sys, numpy as np, hessd
    client = hessd.Client(sys.argv[1], shared_memory=True)
    client.hessian("demo", np.ones((2, 10), np.float32))
    print(client._result_memory._regions[0].name if client._result_memory._regions else repr(client._result_memory.refused), flush=True)
    sys.stdin.readline()
    """
)


def test_a_client_that_dies_leaves_nothing_behind(server: RunningServer) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _DYING_CLIENT, server.target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        name = child.stdout.readline().strip()
        assert server.server.shared_memory.names == [name]
        child.send_signal(signal.SIGKILL)
        child.wait(UNMAP_TIMEOUT_S)
    finally:
        child.kill()
    assert server.server.shared_memory.wait_closed(UNMAP_TIMEOUT_S)
    with open("/proc/self/maps", encoding="utf-8") as maps:
        assert name not in maps.read()
    assert _removed_within(f"/dev/shm/{name}", UNMAP_TIMEOUT_S)


def _removed_within(path: str, timeout: float) -> bool:
    """Whether ``path`` is gone within ``timeout`` seconds (the dead client's resource
    tracker removes its regions once it sees the client gone)."""
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sdk_uses_shared_memory_and_reuses_its_region(server: RunningServer) -> None:
    want = hs.hessian(server.model("demo"), X)
    with hessd.Client(server.target, shared_memory=True) as client:
        names: list[str] = []
        for _ in range(3):  # (no array may outlive its turn, as pytest's asserts would keep it)
            hessian = client.hessian("demo", X)
            same = np.array_equal(hessian, want) and not hessian.flags.writeable
            del hessian
            assert same
            names = names or server.server.shared_memory.names
            assert server.server.shared_memory.names == names and len(names) == 1
    assert server.server.shared_memory.wait_closed(UNMAP_TIMEOUT_S)
    assert not os.path.exists(f"/dev/shm/{names[0]}")


def test_async_sdk_uses_shared_memory_too(server: RunningServer) -> None:
    want_hessian = hs.hessian(server.model("demo"), X)
    want_evaluation = hs.evaluate(server.model("demo"), X)
    before = set(server.server.shared_memory.names)

    async def results() -> tuple[bool, bool, list[str]]:
        async with hessd.AsyncClient(server.target, shared_memory=True) as client:
            hessian = await client.hessian("demo", X)
            evaluation = await client.evaluate("demo", X)
            hessian_same = np.array_equal(hessian, want_hessian) and not hessian.flags.writeable
            evaluation_same = all(
                np.array_equal(got, want) and not got.flags.writeable
                for got, want in zip(evaluation, want_evaluation)
            )
            del hessian, evaluation
            return hessian_same, evaluation_same, server.server.shared_memory.names

    hessian_same, evaluation_same, names = asyncio.run(results())
    assert hessian_same and evaluation_same
    assert set(names) - before, "the results came through regions the client registered"
    assert server.server.shared_memory.wait_closed(UNMAP_TIMEOUT_S)


def test_sdk_falls_back_to_the_wire_when_shared_memory_is_off() -> None:
    with serving(shared_memory="off") as running:
        want = hs.hessian(running.model("demo"), X)
        with pytest.raises(hessd.SharedMemoryError, match="off"):
            _register(running.target, "anything", 64, b"k" * 32)
        with hessd.Client(running.target, shared_memory=True) as client:
            assert np.array_equal(client.hessian("demo", X), want)
            assert isinstance(client._result_memory.refused, hessd.SharedMemoryError)

        async def refused() -> tuple[bool, object]:
            async with hessd.AsyncClient(running.target, shared_memory=True) as client:
                same = np.array_equal(await client.hessian("demo", X), want)
                return same, client._result_memory.refused

        same, reason = asyncio.run(refused())
        assert same and isinstance(reason, hessd.SharedMemoryError)


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_callers_on_other_hosts_are_refused_and_get_the_wire() -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to call itself on")
    config = ServerConfig(listen="0.0.0.0:0", warmup_batch_sizes=(2,))
    running = RunningServer(config)
    try:
        running.wait_until_serving()
        target = f"{address}:{running.port}"
        with pytest.raises(hessd.SharedMemoryPermissionError, match="host"):
            _register(target, "anything", 64, b"k" * 32)
        with hessd.Client(target, shared_memory=True) as client:
            assert np.array_equal(client.hessian("demo", X), hs.hessian(running.model("demo"), X))
            assert isinstance(client._result_memory.refused, hessd.SharedMemoryPermissionError)
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv6:[::1]:5000", True),
        ("ipv6:[::ffff:127.0.0.1]:5000", True),
        ("unix:/run/hessd.sock", True),
        ("unix:", True),
        ("ipv6:%5B::1%5D:5000", True),
        ("ipv6:%5B::ffff:127.0.0.1%5D:5000", True),
        ("ipv4:10.1.2.3:5000", False),
        ("ipv6:[2001:db8::1]:5000", False),
        ("ipv4:169.254.1.2:5000", False),
        ("ipv6:[fe80::1]:5000", False),
        ("ipv6:%5Bfe80::1%5D:5000", False),
        ("ipv6:%5Bfe80::1%25eth0%5D:5000", False),
        ("ipv6:[::ffff:169.254.1.2]:5000", False),
        ("ipv4:0.0.0.0:5000", False),
        ("ipv6:[::]:5000", False),
        ("ipv6:::1:5000", False),
        ("ipv4:[127.0.0.1]:5000", False),
        ("garbage", False),
    ],
)
def test_local_peers_are_loopback_and_unix_sockets(peer: str, local: bool) -> None:
    assert is_local_peer(peer) is local


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this host has no IPv6 loopback")
def test_callers_on_ipv6_loopback_may_register(region: shared_memory.SharedMemory) -> None:
    running = RunningServer(ServerConfig(listen="[::1]:0", warmup_batch_sizes=(2,)))
    try:
        running.wait_until_serving()
        registration = Registration(f"[::1]:{running.port}", region)
        try:
            assert running.server.shared_memory.names == [registration.name]
        finally:
            registration.close()
    finally:
        running.stop()
