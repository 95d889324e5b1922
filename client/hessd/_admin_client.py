"""``hessd.ModelAdminClient``: load, unload and reload a server's repository models."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import grpc

from hessd import _protocol
from hessd._protocol import ChannelOptions
from hessd.results import ModelStatus
from hessd.v1 import model_admin_pb2 as admin_pb
from hessd.v1 import model_admin_pb2_grpc


class ModelAdminClient:
    """Blocking client of a server's ``hessd.v1.ModelAdmin`` service.

    The server offers the service only when started with ``--admin-token-file``;
    ``token`` must be one of that file's tokens, or every call raises
    ``hessd.UnauthenticatedError``. Calls return once the server has finished
    (versions loaded and warm, or drained and unloaded).

    >>> with hessd.ModelAdminClient(target, token="s3cret") as admin:   # doctest: +SKIP
    ...     admin.reload_repository()
    [ModelStatus(name='price', versions=(VersionStatus(version='2', state='AVAILABLE', error=None),), error=None)]

    Args:
        target: server address, e.g. ``"unix:///run/hessd.sock"``.
        token: the admin token, sent as ``authorization: Bearer <token>``.
        timeout: seconds each call may take; ``None`` waits forever.
        credentials: TLS credentials for a secure channel; ``None`` for plaintext.
        options: gRPC channel options.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str,
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions | None = None,
    ) -> None:
        channel_options = _protocol.channel_options(options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout
        self._stub = model_admin_pb2_grpc.ModelAdminStub(self._channel)

    def load_model(self, name: str) -> ModelStatus:
        """Load repository model ``name`` now (and undo an earlier :meth:`unload_model`).

        Returns:
            The model's versions and their states afterwards.

        Raises:
            ModelNotFoundError: the repository has no folder ``name``.
        """
        reply = self._call(self._stub.LoadModel, admin_pb.LoadModelRequest(model_name=name))
        return _protocol.model_status_from(reply.model)

    def unload_model(self, name: str) -> None:
        """Drain and unload every version of ``name``; it stays unloaded until :meth:`load_model`.

        Raises:
            ModelNotFoundError: no such repository model.
        """
        self._call(self._stub.UnloadModel, admin_pb.UnloadModelRequest(model_name=name))

    def reload_repository(self) -> list[ModelStatus]:
        """Scan the repository now and load, unload or retry versions accordingly.

        Returns:
            Every repository model's versions and their states afterwards, by name.
        """
        reply = self._call(self._stub.ReloadRepository, admin_pb.ReloadRepositoryRequest())
        return [_protocol.model_status_from(model) for model in reply.models]

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> ModelAdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: Any) -> Any:
        with _protocol.translated_errors():
            return method(request, timeout=self._timeout, metadata=self._metadata)


__all__ = ["ModelAdminClient"]
