"""Serving: the gRPC server around the engine. No maths here.

What lives here: server assembly (:mod:`.server`: ``create_server(config) ->
(server, port)``), the ``HessianService`` servicer, the status interceptor (one
place for statuses, admission and metrics), the engine executor, admission,
Prometheus metrics, the server configuration, the model registry (versions and
their states), the model repository (:mod:`.model_repository` reads the folder,
:mod:`.repository_config` a model's config.toml, :mod:`.model_loader` loads,
swaps and unloads versions), the ``ModelAdmin`` servicer, ``hessd-server``'s
``main``, the child-process helper and the demo job.

What it may import: ``hessd_server.engine``, gRPC and the ``hessd`` SDK's
shared modules (errors, codec, status codes, generated code). The engine never
imports this package.
"""
