"""Transport security and authentication over real servers: TLS, mTLS (client
certificates required), bearer tokens with health left open, and reflection off.
Certificates come from a CA made for the test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import hessd
import hessd_server as hs
from hessd import cli, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc, shared_memory_pb2, shared_memory_pb2_grpc
from hessd_server.serving.main import serve
from hessd_server.serving.server_config import ServerConfig
from support.tls_certificates import CertificateAuthority, Pem
from support.wire_fixtures import RunningServer, rng_array, serving

TOKEN = "caller-token-0123456789"
X = rng_array((2, 10))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Pem]:
    directory = tmp_path_factory.mktemp("pki")
    authority = CertificateAuthority(directory, "hessd-test")
    stranger = CertificateAuthority(directory, "stranger")
    tokens = directory / "tokens"
    tokens.write_text(f"\n  {TOKEN}  \nanother-token\n")
    return {
        "ca": authority.pem,
        "server": authority.server("server"),
        "client": authority.client("client"),
        "stranger_ca": stranger.pem,
        "stranger_client": stranger.client("stranger-client"),
        "tokens": tokens,
    }


@pytest.fixture(scope="module")
def tls_server(pki: dict) -> Iterator[RunningServer]:
    """TLS without client certificates, bearer tokens required, reflection on."""
    with serving(
        [("demo", hs.DEMO_MODEL_SOURCE)],
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        auth_token_file=str(pki["tokens"]),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(pki: dict) -> Iterator[RunningServer]:
    """TLS with client certificates signed by the test CA required, reflection off."""
    with serving(
        [("demo", hs.DEMO_MODEL_SOURCE)],
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        tls_client_ca=str(pki["ca"]),
        reflection=False,
    ) as running:
        yield running


def _expected(server: RunningServer) -> np.ndarray:
    return hs.hessian(server.model("demo"), X)


def test_a_tls_client_with_the_token_is_served(tls_server: RunningServer, pki: dict) -> None:
    with hessd.Client.secure(tls_server.target, ca=pki["ca"], token=TOKEN, timeout=60) as client:
        assert np.array_equal(client.hessian("demo", X), _expected(tls_server))
        assert [np.array_equal(h, _expected(tls_server)) for h in client.stream("demo", [X, X])] == [True, True]
        assert client.models() == ["demo"]


def test_the_ca_may_be_given_as_pem_bytes(tls_server: RunningServer, pki: dict) -> None:
    ca = Path(pki["ca"]).read_bytes()
    with hessd.Client.secure(tls_server.target, ca=ca, token="another-token", timeout=60) as client:
        assert client.gradient("demo", X).shape == (2, 10)


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "TOKEN_MISSING"), ("wrong", "TOKEN_INVALID"), (TOKEN + "x", "TOKEN_INVALID")],
)
def test_calls_without_an_accepted_token_are_unauthenticated(
    tls_server: RunningServer, pki: dict, token: str | None, reason: str
) -> None:
    with hessd.Client.secure(tls_server.target, ca=pki["ca"], token=token, timeout=60) as client:
        calls = (lambda: client.hessian("demo", X), client.models, lambda: list(client.stream("demo", [X])))
        for call in calls:
            with pytest.raises(hessd.UnauthenticatedError) as raised:
                call()
            assert raised.value.reason == reason and TOKEN not in raised.value.message
        assert client.health() == "SERVING"
        assert client.health("hessd.v1.HessianService") == "SERVING"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_the_bearer_scheme_is_accepted_in_any_case(tls_server: RunningServer, pki: dict, scheme: str) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(pki["ca"]).read_bytes())
    request = pb.GradientRequest(model_name="demo", x={"x": tensor_codec.encode(X, field="x")})
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        reply = hessian_service_pb2_grpc.HessianServiceStub(channel).Gradient(
            request, timeout=60, metadata=[("authorization", f"{scheme} {TOKEN}")]
        )
    assert np.array_equal(tensor_codec.decode(reply.gradient, field="gradient"), hs.gradient(tls_server.model("demo"), X))


def test_the_token_is_checked_on_every_call_of_a_method(tls_server: RunningServer, pki: dict) -> None:
    """The error layer around a method is built once, but no call skips the token check."""
    metrics = tls_server.server.metrics.registry

    def counted(code: str) -> float:
        return metrics.get_sample_value("hessd_requests_total", {"method": "Hessian", "code": code}) or 0.0

    served, refused = counted("OK"), counted("UNAUTHENTICATED")
    with (
        hessd.Client.secure(tls_server.target, ca=pki["ca"], token=TOKEN, timeout=60) as accepted,
        hessd.Client.secure(tls_server.target, ca=pki["ca"], token="wrong", timeout=60) as stranger,
    ):
        for _ in range(3):
            assert np.array_equal(accepted.hessian("demo", X), _expected(tls_server))
            with pytest.raises(hessd.UnauthenticatedError):
                stranger.hessian("demo", X)
    assert (counted("OK") - served, counted("UNAUTHENTICATED") - refused) == (3, 3)


def test_shared_memory_needs_the_token_and_the_sdk_sends_it(tls_server: RunningServer, pki: dict) -> None:
    """Without a token no region can be registered or unregistered; the SDK's own
    registration carries its token, so its results still come through shared memory."""
    credentials = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        stub = shared_memory_pb2_grpc.SharedMemoryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as unregistering:
            stub.UnregisterSharedMemory(shared_memory_pb2.UnregisterSharedMemoryRequest(name="x", key=b"k"), timeout=60)
        with pytest.raises(grpc.RpcError) as registering:
            next(stub.RegisterSharedMemory(shared_memory_pb2.RegisterSharedMemoryRequest(name="x", size=64, key=b"k")))
    assert unregistering.value.code() == registering.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "--auth-token-file" in registering.value.details()
    with hessd.Client.secure(tls_server.target, ca=pki["ca"], token=TOKEN, shared_memory=True, timeout=60) as client:
        hessian = client.hessian("demo", X)
        through_memory = not hessian.flags.writeable and len(tls_server.server.shared_memory.names) == 1
        same = np.array_equal(hessian, _expected(tls_server))
        del hessian
    assert same and through_memory, client._result_memory.refused


def test_reflection_needs_the_token_too(tls_server: RunningServer, pki: dict) -> None:
    credentials = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.secure_channel(tls_server.target, credentials) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.ServerReflectionInfo(iter([request]), timeout=60))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies = list(
            stub.ServerReflectionInfo(
                iter([request]), timeout=60, metadata=[("authorization", f"Bearer {TOKEN}")]
            )
        )
    services = {service.name for service in replies[0].list_services_response.service}
    assert "hessd.v1.HessianService" in services


def test_a_plaintext_client_gets_nothing_from_a_tls_server(tls_server: RunningServer) -> None:
    with hessd.Client(tls_server.target, token=TOKEN, timeout=10) as client:
        with pytest.raises(hessd.UnavailableError):
            client.health()


def test_a_client_trusting_another_ca_is_refused(tls_server: RunningServer, pki: dict) -> None:
    with hessd.Client.secure(tls_server.target, ca=pki["stranger_ca"], token=TOKEN, timeout=10) as client:
        with pytest.raises(hessd.UnavailableError):
            client.health()


def test_mtls_serves_a_client_with_a_certificate_of_the_ca(mtls_server: RunningServer, pki: dict) -> None:
    client_pem = pki["client"]
    with hessd.Client.secure(
        mtls_server.target, ca=pki["ca"], cert=client_pem.cert, key=client_pem.key, timeout=60
    ) as client:
        assert np.array_equal(client.hessian("demo", X), _expected(mtls_server))


def test_the_async_client_speaks_mtls_too(mtls_server: RunningServer, pki: dict) -> None:
    client_pem = pki["client"]

    async def call() -> np.ndarray:
        async with hessd.AsyncClient.secure(
            mtls_server.target, ca=pki["ca"], cert=client_pem.cert, key=client_pem.key, timeout=60
        ) as client:
            return await client.hessian("demo", X)

    assert np.array_equal(asyncio.run(call()), _expected(mtls_server))


@pytest.mark.parametrize("who", ["no-certificate", "certificate-of-another-ca"])
def test_mtls_refuses_clients_without_a_valid_certificate(
    mtls_server: RunningServer, pki: dict, who: str
) -> None:
    keys = {}
    if who == "certificate-of-another-ca":
        keys = {"cert": pki["stranger_client"].cert, "key": pki["stranger_client"].key}
    with hessd.Client.secure(mtls_server.target, ca=pki["ca"], timeout=10, **keys) as client:
        with pytest.raises(hessd.UnavailableError):
            client.health()


def test_reflection_can_be_turned_off(mtls_server: RunningServer, pki: dict) -> None:
    client_pem = pki["client"]
    credentials = grpc.ssl_channel_credentials(
        Path(pki["ca"]).read_bytes(), Path(client_pem.key).read_bytes(), Path(client_pem.cert).read_bytes()
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.secure_channel(mtls_server.target, credentials) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.ServerReflectionInfo(iter([request]), timeout=60))
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_cert_and_key_go_together() -> None:
    with pytest.raises(ValueError, match="cert and key"):
        hessd.Client.secure("127.0.0.1:1", cert=b"x")


@pytest.mark.parametrize("setting", ["auth_token_file", "tls_cert"])
def test_an_unreadable_security_file_stops_the_server_with_status_1(tmp_path: Path, setting: str) -> None:
    missing = str(tmp_path / "absent")
    keys = {"tls_cert": missing, "tls_key": missing} if setting == "tls_cert" else {setting: missing}
    config = ServerConfig(listen="127.0.0.1:0", **keys)
    assert asyncio.run(serve(config)) == 1


def test_the_command_line_client_speaks_tls_with_a_token(
    tls_server: RunningServer, pki: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    target = ["--target", tls_server.target, "--ca", str(pki["ca"]), "--timeout", "60"]
    assert cli.main([*target, "--token-file", str(token_file), "models"]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli.main([*target, "models"]) == 1
    assert "UnauthenticatedError" in capsys.readouterr().err
