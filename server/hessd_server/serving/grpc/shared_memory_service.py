"""``hessd.v1.SharedMemoryService``: callers register their regions for as long as a call lasts.

RegisterSharedMemory answers once, with the proof the caller writes into its
region before ConfirmSharedMemory, and stays open; the registration ends with
UnregisterSharedMemory, with the call's cancellation, or when the caller's
connection closes, so a caller that dies leaves nothing open. Only peers on
the server's host (loopback or a unix socket) may register, unless the
server allows any peer. Once the server drains, new registrations are refused
while the ones made before last until the admitted calls are done.
"""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.parse
from collections.abc import AsyncIterator

import grpc.aio

from hessd.errors import SharedMemoryError, SharedMemoryPermissionError, UnavailableError
from hessd.v1 import shared_memory_pb2 as pb
from hessd.v1 import shared_memory_pb2_grpc

from ..data_plane.shared_memory import PROOF_OFFSET, SharedMemoryRegistry

class SharedMemoryServicer(shared_memory_pb2_grpc.SharedMemoryServiceServicer):
    """Registers regions in ``regions`` for callers allowed by ``access``: ``"off"``,
    ``"local"`` (peers on this host) or ``"any"``."""

    def __init__(self, regions: SharedMemoryRegistry, access: str) -> None:
        self._regions = regions
        self._access = access
        self._endings: dict[str, asyncio.Event] = {}
        self._draining = False

    async def RegisterSharedMemory(
        self, request: pb.RegisterSharedMemoryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RegisterSharedMemoryResponse]:
        self._check_peer(context.peer())
        if self._draining:
            raise UnavailableError(
                "the server is shutting down and registers no new shared memory; retry on "
                "another instance",
                reason="SERVER_DRAINING",
            )
        name, proof = self._regions.register(request.name, request.size, request.key)
        ended = self._endings[name] = asyncio.Event()
        try:
            yield pb.RegisterSharedMemoryResponse(
                name=name, size=request.size, proof=proof, proof_offset=PROOF_OFFSET
            )
            await ended.wait()
        finally:
            if self._endings.get(name) is ended:
                del self._endings[name]
                self._regions.discard(name)

    async def ConfirmSharedMemory(
        self, request: pb.ConfirmSharedMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmSharedMemoryResponse:
        self._regions.confirm(request.name, request.key)
        return pb.ConfirmSharedMemoryResponse()

    async def UnregisterSharedMemory(
        self, request: pb.UnregisterSharedMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnregisterSharedMemoryResponse:
        self._regions.unregister(request.name, request.key)
        name = request.name.removeprefix("/")
        ending = self._endings.pop(name, None)
        if ending is not None:
            ending.set()
        return pb.UnregisterSharedMemoryResponse()

    def start_draining(self) -> None:
        """Refuse new registrations from now on; those made before stay until :meth:`close`."""
        self._draining = True

    def close(self) -> None:
        """End every registration and its call (the server is stopping, its admitted
        calls done)."""
        for ending in self._endings.values():
            ending.set()
        self._endings.clear()
        self._regions.close()

    def _check_peer(self, peer: str) -> None:
        if self._access == "off":
            raise SharedMemoryError(
                "shared memory is off on this server; results come over the wire "
                "(start hessd-server with --shared-memory=local to allow it).",
                field=None,
            )
        if self._access == "local" and not is_local_peer(peer):
            raise SharedMemoryPermissionError(
                f"shared memory is only for callers on the server's host, and {peer} is not "
                "one (connect over loopback or a unix socket, or start hessd-server with "
                "--shared-memory=any if its host shares /dev/shm with yours).",
                field=None,
            )


def is_local_peer(peer: str) -> bool:
    """Whether a gRPC peer string is on this host: a unix socket or a loopback address.

    gRPC writes IPv6 peers percent-encoded (``ipv6:%5B::1%5D:5000``); link-local
    addresses (``169.254.0.0/16``, ``fe80::/10``) are other hosts on the link.
    """
    kind, _, address = peer.partition(":")
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    host = urllib.parse.unquote(address).rpartition(":")[0]
    if kind == "ipv6":
        if not (host.startswith("[") and host.endswith("]")):
            return False
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


__all__ = ["SharedMemoryServicer", "is_local_peer"]
