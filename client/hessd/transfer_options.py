"""HTTP/2 settings for large results, used by the server and by the SDK's channels.

gRPC's defaults (16 KiB frames, a 64 KiB initial flow-control window that BDP
probing grows over time) cut a 16 MB result into about a thousand frames and
stall the stream on window updates. A receiver's window and frame size are
what bound its sender, so both ends set these. The values come from
``benchmarks/bench_transfer.py --sweep`` (see docs/benchmarks/transfer.md).
"""

from __future__ import annotations

from typing import Any

TRANSFER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.http2.max_frame_size", (1 << 24) - 1),
    ("grpc.http2.lookahead_bytes", 64 << 20),
    ("grpc.http2.write_buffer_size", 8 << 20),
)
"""gRPC channel arguments: the largest HTTP/2 frames, a 64 MiB stream window, 8 MiB writes."""

__all__ = ["TRANSFER_OPTIONS"]
