"""A bare gRPC server for the wire benchmark: one unary method that answers
every request with a fixed number of bytes, and does nothing else.

It is the floor of a hessd call on the same transport: the same grpc.aio
server and payload sizes, without decoding, checks or computation.

Usage: ``python benchmarks/echo_server.py --listen unix:///tmp/echo.sock --reply-bytes 16436``
(prints ``listening`` once it serves).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc
import grpc.aio

METHOD = "/bench.Echo/Echo"
"""The one method: bytes in, ``--reply-bytes`` bytes out."""


async def serve(listen: str, reply_bytes: int) -> None:
    """Serve :data:`METHOD` on ``listen`` until cancelled."""
    reply = bytes(reply_bytes)

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(listen)
    await server.start()
    print("listening", flush=True)
    await server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port or unix:///path")
    parser.add_argument("--reply-bytes", type=int, required=True, help="bytes in every reply")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.reply_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
