"""Shared-memory regions a blocking :class:`hessd.Client` has results written into.

The client creates POSIX regions (``multiprocessing.shared_memory``, writable
by their owner only) and registers each under a random access key over a
RegisterSharedMemory call that stays open for the region's life; it writes the
proof the server replies with into the region and confirms it, which shows the
server that this caller may write there. Each
result gets its own slot in a region; the arrays returned to the caller are
read-only views of the slot, which is freed for reuse once every one of them
is garbage. A server that refuses shared memory (another host, switched off)
makes the client send results over the wire from then on.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import weakref
from collections.abc import Sequence
from multiprocessing import shared_memory

import grpc
import numpy as np

from hessd import status_codes, tensor_codec
from hessd._protocol import CallMetadata
from hessd.errors import (
    HessdError,
    InternalError,
    InvalidSharedMemoryError,
    SharedMemoryError,
    TensorEncodingError,
)
from hessd.v1 import shared_memory_pb2 as pb
from hessd.v1 import shared_memory_pb2_grpc
from hessd.v1.tensor_pb2 import SharedMemoryLocation, Tensor

_log = logging.getLogger(__name__)

MIN_REGION_BYTES = 64 << 20
"""Smallest region created; a larger result gets a region of its own size."""

PROOF_BYTES = 32
"""Bytes of the server's proof, which a region must hold room for."""

ALIGNMENT = 64
"""Slots start at multiples of this many bytes (the server's alignment of Evaluate's results)."""

_KEY_BYTES = 32

_RETIRED: list[shared_memory.SharedMemory] = []
"""Removed regions that result arrays still viewed; unmapped by :func:`_sweep` once free."""


class _Region:
    """One registered region and its slots in use, as (start, end) byte ranges."""

    def __init__(
        self,
        stub: shared_memory_pb2_grpc.SharedMemoryServiceStub,
        size: int,
        metadata: CallMetadata,
    ) -> None:
        self.memory = shared_memory.SharedMemory(
            name=f"hessd_{secrets.token_hex(12)}", create=True, size=size
        )
        self.name = self.memory.name.removeprefix("/")
        self.key = secrets.token_bytes(_KEY_BYTES)
        self.size = size
        self.used: list[tuple[int, int]] = []
        self.closing = False
        request = pb.RegisterSharedMemoryRequest(name=self.name, size=size, key=self.key)
        self._metadata = metadata
        self.registration = stub.RegisterSharedMemory(request, metadata=metadata)
        failure: HessdError
        try:
            self._prove(next(self.registration))
            stub.ConfirmSharedMemory(
                pb.ConfirmSharedMemoryRequest(name=self.name, key=self.key), metadata=metadata
            )
            return
        except grpc.RpcError as error:
            failure = status_codes.from_rpc_error(error)
            error.__traceback__ = None  # gRPC keeps the failed call, which must not keep our frames
        except StopIteration:
            failure = InternalError("the server ended RegisterSharedMemory without a reply")
        except InvalidSharedMemoryError as error:
            failure = error
            error.__traceback__ = None
        self.registration.cancel()
        # Raised outside the handler, with the call dropped and the local cleared, so
        # that no reference cycle through this frame keeps the caller's frames (and the
        # arrays they hold) alive until a garbage collection.
        del self.registration
        self._release()
        try:
            raise failure
        finally:
            del failure

    def _prove(self, reply: pb.RegisterSharedMemoryResponse) -> None:
        """Write the server's proof where it asks, inside the region.

        Raises:
            InvalidSharedMemoryError: the reply asks for a write outside the region.
        """
        if not reply.proof:
            raise InvalidSharedMemoryError(
                "the server sent no proof to write into the region (it predates proven "
                "registrations); results come over the wire.",
                field="proof",
            )
        end = reply.proof_offset + len(reply.proof)
        if end > self.size:
            raise InvalidSharedMemoryError(
                f"the server asked for a proof of {len(reply.proof)} bytes at byte "
                f"{reply.proof_offset:,}, outside this {self.size:,}-byte region; nothing was "
                "written.",
                field="proof",
            )
        assert self.memory.buf is not None
        self.memory.buf[reply.proof_offset : end] = reply.proof

    def allocate(self, nbytes: int) -> int | None:
        """Start of a free slot of ``nbytes``, now in use; ``None`` if none is free."""
        start = 0
        for index, (used_start, used_end) in enumerate(self.used):
            if start + nbytes <= used_start:
                self.used.insert(index, (start, start + nbytes))
                return start
            start = _aligned(used_end)
        if start + nbytes > self.size:
            return None
        self.used.append((start, start + nbytes))
        return start

    def free(self, start: int) -> None:
        self.used = [slot for slot in self.used if slot[0] != start]
        if self.closing and not self.used:
            _RETIRED.append(self.memory)

    def close(self, stub: shared_memory_pb2_grpc.SharedMemoryServiceStub) -> None:
        """Unregister and remove the region; its memory goes once no result views it."""
        self.closing = True
        request = pb.UnregisterSharedMemoryRequest(name=self.name, key=self.key)
        try:
            stub.UnregisterSharedMemory(request, timeout=5, metadata=self._metadata)
        except grpc.RpcError:
            _log.debug("unregistering %s failed; ending its registration call", self.name)
        self.registration.cancel()
        if self.used:
            self.memory.unlink()
        else:
            self._release()

    def _release(self) -> None:
        try:
            self.memory.unlink()
        except FileNotFoundError:
            pass
        self.memory.close()


class Slot:
    """Bytes ``start`` to ``start + nbytes`` of a region, held for one call's results."""

    def __init__(self, memory: ResultMemory, region: _Region, start: int, nbytes: int) -> None:
        self._memory = memory
        self.region = region
        self.start = start
        self.nbytes = nbytes
        self.holders = 1
        """The call, and each array viewing the slot; the slot is free when none is left."""

    @property
    def location(self) -> SharedMemoryLocation:
        """Where the server is to write the results."""
        return SharedMemoryLocation(region=self.region.name, key=self.region.key, offset=self.start)

    def arrays(self, tensors: Sequence[tuple[str, Tensor]]) -> list[np.ndarray]:
        """The results the reply's ``tensors`` (field name, Tensor) place in this slot.

        Arrays are read-only views of the slot where the bytes are usable as they
        are (then the slot is held until the arrays are garbage), copies otherwise.

        Raises:
            TensorEncodingError: a tensor lies outside the slot or is not in shared memory.
        """
        arrays = []
        for name, tensor in tensors:
            location = tensor.shared_memory
            size = tensor_codec.nbytes(tensor.dtype, tensor.shape, field=name, packing=tensor.packing)
            if (
                not tensor.HasField("shared_memory")
                or location.region != self.region.name
                or location.offset < self.start
                or location.offset + size > self.start + self.nbytes
            ):
                raise TensorEncodingError(
                    f"the server placed {name} outside the shared memory it was given.", field=name
                )
            assert self.region.memory.buf is not None
            view = self.region.memory.buf[location.offset : location.offset + size]
            array = tensor_codec.from_bytes(
                tensor.dtype, tensor.shape, view, field=name, packing=tensor.packing
            )
            base = array
            while isinstance(base.base, np.ndarray):
                base = base.base
            if isinstance(base.base, memoryview):
                self.holders += 1
                weakref.finalize(base, self._memory.released.append, self)
            arrays.append(array)
        return arrays

    def done(self) -> None:
        """The call is over: free the slot once no array views it."""
        self._memory.released.append(self)


class ResultMemory:
    """The shared-memory regions of one client, created and registered on first use.

    Args:
        channel: the client's channel to the server.
        metadata: what every call carries (the client's bearer token).
    """

    def __init__(self, channel: grpc.Channel, metadata: CallMetadata) -> None:
        self._stub = shared_memory_pb2_grpc.SharedMemoryServiceStub(channel)
        self._metadata = metadata
        self._regions: list[_Region] = []
        self._lock = threading.Lock()
        self.refused: HessdError | None = None
        self.released: collections.deque[Slot] = collections.deque()
        """One entry per release of a slot: by its call, or by an array viewing it being
        garbage. Appending is all a garbage collection does, on whatever thread it runs;
        the slots are freed under the lock, by :meth:`slot` and :meth:`close`."""

    def slot(self, nbytes: int) -> Slot | None:
        """A slot of ``nbytes`` in a registered region; ``None`` once the server has
        refused shared memory (results then come over the wire)."""
        with self._lock:
            self._free_released()
            if self.refused is not None:
                return None
            for region in self._regions:
                start = region.allocate(nbytes)
                if start is not None:
                    return Slot(self, region, start, nbytes)
            try:
                region = self._registered(nbytes)
            except SharedMemoryError as error:
                _log.info("results come over the wire: %s", error)
                self.refused = error
                return None
            self._regions.append(region)
            start = region.allocate(nbytes)
            assert start == 0
            return Slot(self, region, start, nbytes)

    def _registered(self, nbytes: int) -> _Region:
        """A new registered region for at least ``nbytes``: :data:`MIN_REGION_BYTES`, or
        just ``nbytes`` when the server allows no region that large."""
        try:
            return _Region(self._stub, max(nbytes, MIN_REGION_BYTES), self._metadata)
        except InvalidSharedMemoryError:
            if nbytes >= MIN_REGION_BYTES:
                raise
            return _Region(self._stub, max(nbytes, PROOF_BYTES), self._metadata)

    def reset(self) -> None:
        """Drop every region, e.g. after the server lost them by restarting; new ones
        are registered on next use."""
        with self._lock:
            self._free_released()
            regions, self._regions = self._regions, []
            for region in regions:
                region.close(self._stub)

    def _free_released(self) -> None:
        while self.released:
            slot = self.released.popleft()
            slot.holders -= 1
            if slot.holders == 0:
                slot.region.free(slot.start)
        _sweep()

    def close(self) -> None:
        """Unregister and remove every region (their memory lasts while results view it)."""
        self.reset()


def _sweep() -> None:
    """Unmap the retired regions that no array views any more."""
    for memory in list(_RETIRED):
        try:
            memory.close()
        except BufferError:
            continue
        _RETIRED.remove(memory)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


__all__ = ["ResultMemory", "Slot"]
