"""``hessd.v1.ModelAdmin``: load, unload and reload repository models, behind a token.

Served only when the server has ``--admin-token-file``. Every call must carry
``authorization: Bearer <token>`` with a token of that file; without it, or with
a wrong one, the call fails UNAUTHENTICATED and changes nothing. The token check
and the errors' statuses are the error layer's, as for every ``hessd.v1``
service (:mod:`~hessd_server.serving.grpc.status_interceptor`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc.aio

from hessd.v1 import model_admin_pb2 as admin_pb
from hessd.v1 import model_admin_pb2_grpc

from ..repository.model_loader import ModelLoader
from ..repository.model_registry import ModelRegistry
from .servicer import model_versions

T = TypeVar("T")

ADMIN_SERVICE_NAME: str = admin_pb.DESCRIPTOR.services_by_name["ModelAdmin"].full_name
"""``"hessd.v1.ModelAdmin"``."""

Administer = Callable[[Callable[[], T]], Awaitable[T]]
"""Runs a blocking loader action on the loading thread, one at a time, and updates health."""


class ModelAdminServicer(model_admin_pb2_grpc.ModelAdminServicer):
    """Administers the models of ``loader``'s repository.

    Args:
        loader: loads and unloads repository models.
        registry: the served models, for the replies.
        administer: runs a loader action (see :data:`Administer`).
    """

    def __init__(
        self,
        loader: ModelLoader,
        registry: ModelRegistry,
        administer: Administer[Any],
    ) -> None:
        self._loader = loader
        self._registry = registry
        self._administer = administer

    async def LoadModel(
        self, request: admin_pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb.LoadModelResponse:
        await self._administer(functools.partial(self._loader.load_model, request.model_name))
        status = self._registry.describe(request.model_name)
        return admin_pb.LoadModelResponse(model=model_versions(status))

    async def UnloadModel(
        self, request: admin_pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb.UnloadModelResponse:
        await self._administer(functools.partial(self._loader.unload_model, request.model_name))
        return admin_pb.UnloadModelResponse()

    async def ReloadRepository(
        self, request: admin_pb.ReloadRepositoryRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb.ReloadRepositoryResponse:
        await self._administer(functools.partial(self._loader.reload, explicit=True))
        return admin_pb.ReloadRepositoryResponse(
            models=[
                model_versions(status)
                for status in self._registry.statuses()
                if not self._registry.is_fixed(status.name)
            ]
        )
