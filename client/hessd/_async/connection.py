"""The channel, call metadata and call timeout that every hessd client is built on."""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar

import grpc

from hessd import _async_flavour as flavour
from hessd import _channels, _protocol, _tracing
from hessd._channels import Target
from hessd._protocol import ChannelOptions, PemSource

Connected = TypeVar("Connected", bound="AsyncConnection")


class AsyncConnection:
    """A channel to one hessd server, or to several equivalent ones, and its call settings.

    Args:
        target, timeout, credentials, token, options, load_balancing: as for
            :class:`hessd.Client`.

    Raises:
        ValueError: a target list that is empty, mixes IPv4 and IPv6 or holds a
            non-IP address; an unknown ``load_balancing``; an empty token, or one
            with surrounding whitespace or a newline.
    """

    def __init__(
        self,
        target: Target,
        *,
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        options: ChannelOptions | None = None,
        load_balancing: str | None = None,
    ) -> None:
        self._metadata = _protocol.call_metadata(token)
        self._target = _channels.channel_target(target)
        self._credentials = credentials
        self._channel_options = _channels.channel_options(self._target, options, load_balancing)
        self._channel = flavour.open_channel(self._target, credentials, self._channel_options)
        self._timeout = timeout

    @classmethod
    def secure(
        cls: type[Connected],
        target: Target,
        *,
        ca: PemSource | None = None,
        cert: PemSource | None = None,
        key: PemSource | None = None,
        **settings: Any,
    ) -> Connected:
        """A client over TLS, with a client certificate for mTLS.

        >>> client = hessd.Client.secure("hessd.internal:50051", ca="ca.pem",  # doctest: +SKIP
        ...                              cert="client.pem", key="client.key", token="s3cret")

        Args:
            target: as for the constructor; the host name must match the server certificate.
            ca: PEM of the CA(s) to trust (a path, or the PEM bytes); ``None``
                trusts the system's roots.
            cert: PEM certificate chain the client presents (mTLS), with ``key``.
            key: PEM private key of ``cert``.
            settings: further keywords of the constructor (``timeout``, ``token``,
                ``options``, ...).

        Raises:
            ValueError: only one of ``cert`` and ``key``.
            OSError: a PEM file that cannot be read.
        """
        return cls(target, credentials=_protocol.tls_credentials(ca, cert, key), **settings)

    async def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        await self._channel.close()

    async def __aenter__(self: Connected) -> Connected:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(self, method: flavour.UnaryCall, request: Any) -> Any:
        """``method``'s reply to ``request``; a failed call raises its ``hessd`` exception."""
        with _tracing.traced_call(method, self._metadata) as metadata, _protocol.translated_errors():
            return await method(request, timeout=self._timeout, metadata=metadata)


__all__ = ["AsyncConnection"]
