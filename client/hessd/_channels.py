"""How the SDK sets up its channels: the target, load balancing, retries and health checking.

Everything here is standard gRPC: a target naming one server or several, and a
service config (``grpc.service_config``) with the load-balancing policy, a retry
policy for ``UNAVAILABLE`` with retry throttling, and client-side health
checking. A target that names several servers (``dns:///name:port``,
``ipv4:a:p,b:p``, or a list of addresses) is balanced with ``round_robin``,
which sends each call to the next healthy server; health checking takes a
server out of the rotation as soon as it reports ``NOT_SERVING`` (warming up or
draining), and a call that meets a server that just started draining is
retried on another.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any, TypeAlias

from hessd import _protocol
from hessd._protocol import ChannelOptions
from hessd.transfer_options import TRANSFER_OPTIONS

Target: TypeAlias = "str | Sequence[str]"
"""A gRPC target string, or a list of ``ip:port`` addresses of equivalent servers."""

ROUND_ROBIN = "round_robin"
"""Each call goes to the next ready, healthy server; the default for several servers."""

PICK_FIRST = "pick_first"
"""All calls go to one server (the first that connects); the default for one server."""

LOAD_BALANCING_POLICIES: tuple[str, ...] = (ROUND_ROBIN, PICK_FIRST)
"""The policies ``load_balancing=`` accepts."""

HEALTH_CHECK_SERVICE = "hessd.v1.HessianService"
"""The ``grpc.health.v1`` service name whose status decides whether a server gets calls."""

RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
"""gRPC retry policy of every HessianService call: up to 5 attempts in all, with
randomized exponential backoff (at most 0.1 s, 0.2 s, 0.4 s, 0.8 s before the
2nd to 5th); every hessd call is safe to repeat. Attempts share the call's
``timeout``; a streaming call is retried only until its first reply arrives."""

RETRY_THROTTLING: dict[str, Any] = {"maxTokens": 10, "tokenRatio": 0.1}
"""gRPC retry throttling, per channel: each failed attempt spends a token and each
success earns back 0.1 of one, and calls are retried only while more than half of
the 10 tokens are left. A server that keeps refusing (overloaded, every replica
draining) then gets each call once, not five times, until calls succeed again."""

_SERVICE_CONFIG = "grpc.service_config"
_DISABLE_RESOLVER_CONFIG = "grpc.service_config_disable_resolution"
_PER_RPC_RETRY_BUFFER = "grpc.per_rpc_retry_buffer_size"
_MAX_SEND = "grpc.max_send_message_length"
_MAX_RECEIVE = "grpc.max_receive_message_length"
_MULTI_ADDRESS_SCHEMES = ("ipv4:", "ipv6:")


def channel_target(target: Target) -> str:
    """The gRPC target string for ``target``.

    A string is used as it is (``host:port``, ``unix:///path``, ``dns:///name:port``,
    ``ipv4:10.0.0.1:50051,10.0.0.2:50051``, ...). A list of ``ip:port``
    addresses (IPv6 as ``[addr]:port``) becomes an ``ipv4:`` or ``ipv6:``
    multi-address target.

    Raises:
        ValueError: an empty list, an address that is not an IP literal with a
            port, or IPv4 and IPv6 addresses mixed.
    """
    if isinstance(target, str):
        return target
    addresses = list(target)
    if not addresses:
        raise ValueError("target lists no address; give at least one 'ip:port'")
    versions = {_ip_version(address) for address in addresses}
    if len(versions) > 1:
        raise ValueError(
            f"target mixes IPv4 and IPv6 addresses {addresses}; gRPC balances over one family"
        )
    return f"ipv{versions.pop()}:" + ",".join(addresses)


def default_load_balancing(target: str) -> str:
    """``round_robin`` for a target that may name several servers, else ``pick_first``.

    Several servers: a ``dns:`` target (a headless Service name resolves to
    every ready replica) and an ``ipv4:``/``ipv6:`` target with more than one
    address. A plain ``host:port`` or a unix socket names one server.
    """
    if target.startswith("dns:"):
        return ROUND_ROBIN
    if target.startswith(_MULTI_ADDRESS_SCHEMES) and "," in target:
        return ROUND_ROBIN
    return PICK_FIRST


def service_config(load_balancing: str) -> str:
    """The service config JSON: ``load_balancing``, the retry policy and its throttling,
    and health checking.

    Raises:
        ValueError: ``load_balancing`` is not one of :data:`LOAD_BALANCING_POLICIES`.
    """
    if load_balancing not in LOAD_BALANCING_POLICIES:
        raise ValueError(
            f"load_balancing must be one of {list(LOAD_BALANCING_POLICIES)}, "
            f"got {load_balancing!r}"
        )
    return json.dumps(
        {
            "loadBalancingConfig": [{load_balancing: {}}],
            "healthCheckConfig": {"serviceName": HEALTH_CHECK_SERVICE},
            "methodConfig": [
                {"name": [{"service": HEALTH_CHECK_SERVICE}], "retryPolicy": RETRY_POLICY}
            ],
            "retryThrottling": RETRY_THROTTLING,
        }
    )


def channel_options(
    target: str, options: ChannelOptions | None, load_balancing: str | None
) -> list[tuple[str, Any]]:
    """The options of a channel to ``target``: the SDK's service config, both message
    size limits (4 MiB) and the HTTP/2 settings of :mod:`hessd.transfer_options`, with
    ``options`` on top (an explicit ``grpc.service_config`` wins).

    The service config uses ``load_balancing``, or :func:`default_load_balancing`
    when it is ``None``. DNS TXT service configs are ignored, and requests up to
    the send limit stay retryable (gRPC's own per-call retry buffer is 256 KiB).
    """
    policy = default_load_balancing(target) if load_balancing is None else load_balancing
    merged: dict[str, Any] = {
        _SERVICE_CONFIG: service_config(policy),
        _DISABLE_RESOLVER_CONFIG: 1,
    }
    merged.update(
        {
            _MAX_SEND: _protocol.DEFAULT_MAX_MESSAGE_BYTES,
            _MAX_RECEIVE: _protocol.DEFAULT_MAX_MESSAGE_BYTES,
            **dict(TRANSFER_OPTIONS),
        }
    )
    merged.update(options or ())
    if merged[_MAX_SEND] > 0:
        merged.setdefault(_PER_RPC_RETRY_BUFFER, merged[_MAX_SEND])
    return list(merged.items())


def _ip_version(address: str) -> int:
    host, separator, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        if not separator or not port.isdigit():
            raise ValueError("no port")
        version = ipaddress.ip_address(host[1:-1] if bracketed else host).version
        if bracketed != (version == 6):
            raise ValueError("IPv6 addresses, and only they, are bracketed")
        return version
    except ValueError:
        raise ValueError(
            f"target address {address!r} is not 'ip:port' (IPv6 as '[addr]:port'); "
            "for a name that resolves to several servers use 'dns:///name:port'"
        ) from None
