"""``hessd.AsyncModelAdminClient``: load, unload and reload a server's repository models."""

from __future__ import annotations

import grpc

from hessd._async.connection import AsyncConnection
from hessd._channels import Target
from hessd._protocol import ChannelOptions, model_status_from
from hessd.results import ModelStatus
from hessd.v1 import model_admin_pb2 as admin_pb
from hessd.v1 import model_admin_pb2_grpc


class AsyncModelAdminClient(AsyncConnection):
    """Client of a server's ``hessd.v1.ModelAdmin`` service, for asyncio.

    The server offers the service only when started with ``--admin-token-file``;
    ``token`` must be one of that file's tokens, or every call raises
    ``hessd.UnauthenticatedError``. Calls return once the server has finished
    (versions loaded and warm, or drained and unloaded). Targets, TLS (see
    :meth:`secure`), retries and health checking are those of :class:`hessd.Client`.

    >>> async with hessd.AsyncModelAdminClient(target, token="s3cret") as admin:  # doctest: +SKIP
    ...     await admin.reload_repository()
    [ModelStatus(name='price', versions=(VersionStatus(version='2', state='AVAILABLE', error=None),), error=None)]

    Args:
        target: server address(es), as for :class:`hessd.Client`.
        token: the admin token, sent as ``authorization: Bearer <token>``.
        timeout, credentials, options, load_balancing: as for :class:`hessd.Client`.

    Raises:
        ValueError: a bad ``target`` or ``load_balancing``; an empty token, or one
            with surrounding whitespace or a newline.
    """

    def __init__(
        self,
        target: Target,
        *,
        token: str,
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions | None = None,
        load_balancing: str | None = None,
    ) -> None:
        super().__init__(
            target,
            token=token,
            timeout=timeout,
            credentials=credentials,
            options=options,
            load_balancing=load_balancing,
        )
        self._stub = model_admin_pb2_grpc.ModelAdminStub(self._channel)

    async def load_model(self, name: str) -> ModelStatus:
        """Load repository model ``name`` now (and undo an earlier :meth:`unload_model`).

        Returns:
            The model's versions and their states afterwards.

        Raises:
            ModelNotFoundError: the repository has no folder ``name``.
            UnauthenticatedError: ``token`` is not an admin token.
        """
        request = admin_pb.LoadModelRequest(model_name=name)
        reply = await self._unary(self._stub.LoadModel, request)
        return model_status_from(reply.model)

    async def unload_model(self, name: str) -> None:
        """Drain and unload every version of ``name``; it stays unloaded until :meth:`load_model`.

        Raises:
            ModelNotFoundError: no such repository model.
            UnauthenticatedError: ``token`` is not an admin token.
        """
        await self._unary(self._stub.UnloadModel, admin_pb.UnloadModelRequest(model_name=name))

    async def reload_repository(self) -> list[ModelStatus]:
        """Scan the repository now and load, unload or retry versions accordingly.

        Returns:
            Every repository model's versions and their states afterwards, by name.

        Raises:
            UnauthenticatedError: ``token`` is not an admin token.
        """
        request = admin_pb.ReloadRepositoryRequest()
        reply = await self._unary(self._stub.ReloadRepository, request)
        return [model_status_from(model) for model in reply.models]


__all__ = ["AsyncModelAdminClient"]
