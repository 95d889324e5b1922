"""Serving: the gRPC server around the engine. No maths here.

Its parts, in the order a request meets them: :mod:`.grpc` (servicers that
decode and encode, the status interceptor, auth, reply serialization),
:mod:`.data_plane` (version lookup, checks, limits, reply plan, one hand-off to
scheduling), :mod:`.scheduling` (batcher, engine threads, admission) and the
engine. Beside them: :mod:`.repository` (scanner, config, loader, registry),
:mod:`.observability` (metrics, failure log, GC, allocator), and at the top
:mod:`.server` (``create_server(config) -> (server, port)``),
:mod:`.server_config`, :mod:`.main` (``hessd-server``), :mod:`.server_process`
(a child-process server) and :mod:`.demo_job` (``make run``).

Dependencies point one way: grpc → data_plane → scheduling / repository →
engine. The engine never imports this package, and the data plane, scheduling
and repository never import gRPC (``tests/test_layout.py``).
"""
