"""How the SDK sets up channels: targets of several servers, load balancing, retries, health."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

import hessd
from hessd import _channels


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("unix:///run/hessd/hessd.sock", "unix:///run/hessd/hessd.sock"),
        (["10.0.0.1:50051"], "ipv4:10.0.0.1:50051"),
        (("10.0.0.1:50051", "10.0.0.2:50052"), "ipv4:10.0.0.1:50051,10.0.0.2:50052"),
        (["[::1]:50051", "[fe80::1]:50052"], "ipv6:[::1]:50051,[fe80::1]:50052"),
    ],
)
def test_a_target_string_is_kept_and_a_list_of_addresses_becomes_one_target(
    target: str | list[str], expected: str
) -> None:
    assert _channels.channel_target(target) == expected


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        ([], "no address"),
        (["hessd.default.svc:50051"], "dns:///"),
        (["10.0.0.1"], "ip:port"),
        (["::1:50051"], "ip:port"),
        (["[10.0.0.1]:50051"], "ip:port"),
        (["10.0.0.1:50051", "[::1]:50051"], "mixes IPv4 and IPv6"),
    ],
)
def test_a_bad_list_of_addresses_says_what_to_write(target: list[str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace(".", r"\.")):
        _channels.channel_target(target)


@pytest.mark.parametrize(
    ("target", "policy"),
    [
        ("dns:///hessd.default.svc.cluster.local:50051", "round_robin"),
        ("dns://10.96.0.10/hessd:50051", "round_robin"),
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051", "round_robin"),
        ("ipv6:[::1]:50051,[::1]:50052", "round_robin"),
        ("ipv4:10.0.0.1:50051", "pick_first"),
        ("127.0.0.1:50051", "pick_first"),
        ("unix:///run/hessd/hessd.sock", "pick_first"),
    ],
)
def test_round_robin_is_the_default_for_several_servers_only(target: str, policy: str) -> None:
    assert _channels.default_load_balancing(target) == policy
    config = json.loads(dict(_channels.channel_options(target, None, None))["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{policy: {}}]


def test_the_service_config_retries_unavailable_with_backoff_and_checks_health() -> None:
    config = json.loads(_channels.service_config("round_robin"))
    assert config["healthCheckConfig"] == {"serviceName": "hessd.v1.HessianService"}
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "hessd.v1.HessianService"}]
    retry = method["retryPolicy"]
    assert 2 <= retry["maxAttempts"] <= 5  # gRPC caps attempts at 5
    assert retry["retryableStatusCodes"] == ["UNAVAILABLE"]
    initial, maximum = (float(retry[key].removesuffix("s")) for key in ("initialBackoff", "maxBackoff"))
    assert retry["backoffMultiplier"] > 1 and 0 < initial < maximum


def test_the_keyword_overrides_the_default_and_explicit_options_win() -> None:
    target = "dns:///hessd:50051"
    options = dict(_channels.channel_options(target, None, "pick_first"))
    assert json.loads(options["grpc.service_config"])["loadBalancingConfig"] == [{"pick_first": {}}]
    assert options["grpc.per_rpc_retry_buffer_size"] == options["grpc.max_send_message_length"]
    mine = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    options = dict(
        _channels.channel_options(
            target, [("grpc.service_config", mine), ("grpc.max_send_message_length", 1 << 20)], None
        )
    )
    assert options["grpc.service_config"] == mine
    assert options["grpc.per_rpc_retry_buffer_size"] == 1 << 20


@pytest.mark.parametrize("client_class", [hessd.Client, hessd.AsyncClient])
def test_an_unknown_load_balancing_policy_is_refused(client_class: type) -> None:
    with pytest.raises(ValueError, match="round_robin"):
        client_class("dns:///hessd:50051", load_balancing="least_request")


def test_the_deployment_guide_shows_the_service_config_the_sdk_uses() -> None:
    section = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "deployment.md").read_text()
    start = section.index("```json") + len("```json")
    shown = section[start : section.index("```", start)]
    assert json.loads(shown) == json.loads(_channels.service_config("round_robin"))


def test_retries_stop_while_a_server_keeps_refusing() -> None:
    """A real gRPC server that answers every Hessian call UNAVAILABLE (as an
    overloaded hessd does): the first call is retried, and once the channel's
    retry tokens are spent each later call is sent once, not five times."""
    attempts: list[str] = []

    def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
        attempts.append("Hessian")
        context.abort(grpc.StatusCode.UNAVAILABLE, "the server is overloaded; retry with backoff")

    handler = grpc.method_handlers_generic_handler(
        "hessd.v1.HessianService",
        {"Hessian": grpc.unary_unary_rpc_method_handler(refuse)},
    )
    server = grpc.server(ThreadPoolExecutor(2), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    calls = 12
    try:
        with hessd.Client(f"127.0.0.1:{port}", timeout=30) as client:
            for _ in range(calls):
                with pytest.raises(hessd.UnavailableError):
                    client.hessian("demo", np.zeros((1, 2), np.float32))
    finally:
        server.stop(None)
    retried = len(attempts) - calls
    assert retried >= 1, "the first refusals are retried"
    assert retried <= _channels.RETRY_THROTTLING["maxTokens"], attempts


@pytest.mark.parametrize("admin_class", [hessd.ModelAdminClient, hessd.AsyncModelAdminClient])
def test_the_admin_clients_share_the_targets_service_config_and_token_checks(
    admin_class: type,
) -> None:
    """A real gRPC server whose ModelAdmin answers UNAVAILABLE, reached through a list
    target over a channel with the SDK's service config, as the client's is."""
    attempts: list[str] = []

    def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
        attempts.append("ReloadRepository")
        context.abort(grpc.StatusCode.UNAVAILABLE, "the server is draining; retry elsewhere")

    handler = grpc.method_handlers_generic_handler(
        "hessd.v1.ModelAdmin",
        {"ReloadRepository": grpc.unary_unary_rpc_method_handler(refuse)},
    )
    server = grpc.server(ThreadPoolExecutor(2), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    configs: list[str] = []

    async def reload_async() -> None:
        async with admin_class([f"127.0.0.1:{port}"], token="s3cret", timeout=30) as admin:
            configs.append(dict(admin._channel_options)["grpc.service_config"])
            await admin.reload_repository()

    try:
        with pytest.raises(hessd.UnavailableError):
            if admin_class is hessd.AsyncModelAdminClient:
                asyncio.run(reload_async())
            else:
                with admin_class([f"127.0.0.1:{port}"], token="s3cret", timeout=30) as admin:
                    configs.append(dict(admin._channel_options)["grpc.service_config"])
                    admin.reload_repository()
    finally:
        server.stop(None)
    assert attempts == ["ReloadRepository"]
    assert configs == [_channels.service_config("pick_first")]
    with pytest.raises(ValueError, match="whitespace"):
        admin_class(f"127.0.0.1:{port}", token=" s3cret")
    with pytest.raises(ValueError, match="round_robin"):
        admin_class("dns:///hessd:50051", token="s3cret", load_balancing="least_request")
