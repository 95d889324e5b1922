"""The SDK's clients, hand-written for asyncio (grpc.aio).

This package is the one source of both flavours: ``make sdk`` generates the
blocking ``hessd._sync`` from it (``scripts/generate_sync_sdk.py``), and
``tests/sdk/test_generated_sdk.py`` fails when that copy is stale. What the
flavours do differently lives in :mod:`hessd._async_flavour` and
:mod:`hessd._sync_flavour`.
"""
