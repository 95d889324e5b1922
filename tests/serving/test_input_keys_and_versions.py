"""How a call names its model version and its inputs: ``model_version`` as an
int or a string, and the keys of ``x`` for a single-input model, in-process
and over the wire, from both SDK flavours."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd import errors, status_codes, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from support.wire_fixtures import RunningServer, named_input_model, rng_array

X = rng_array((2, 2), seed=3)


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[hessd.Client]:
    with hessd.Client(server.target, timeout=120) as connected:
        yield connected


@pytest.mark.parametrize("version", [1, np.int64(1), "1"])
def test_model_version_may_be_an_int_or_a_string_of_digits(
    client: hessd.Client, server: RunningServer, version: Any
) -> None:
    x = rng_array((2, 10))
    result = client.gradient("demo", x, model_version=version, with_version=True)
    assert result.model_version == "1"
    np.testing.assert_array_equal(result.result, hs.gradient(server.model("demo"), x))
    assert client.metadata("demo", model_version=version).name == "demo"


def test_an_int_version_the_server_does_not_serve_is_not_found(client: hessd.Client) -> None:
    with pytest.raises(errors.ModelNotFoundError) as raised:
        client.hessian("demo", rng_array((1, 10)), model_version=2)
    assert raised.value.field == "model_version"
    assert raised.value.reason == "MODEL_VERSION_NOT_FOUND"


@pytest.mark.parametrize("version", [1.0, True, -1, b"1", [1]])
def test_a_model_version_of_another_type_is_refused_before_the_call(
    client: hessd.Client, version: Any
) -> None:
    with pytest.raises(errors.InvalidArgumentError) as raised:
        client.hessian("demo", rng_array((1, 10)), model_version=version)
    assert (raised.value.field, raised.value.reason) == ("model_version", "INVALID_ARGUMENT")
    assert "version number such as 2" in raised.value.message
    with pytest.raises(errors.InvalidArgumentError):
        client.metadata("demo", model_version=version)


def test_the_async_client_takes_an_int_version_and_refuses_a_float(server: RunningServer) -> None:
    async def calls() -> tuple[str, type[BaseException] | None]:
        async with hessd.AsyncClient(server.target, timeout=120) as client:
            result = await client.hessian("demo", rng_array((1, 10)), model_version=1, with_version=True)
            try:
                await client.gradient("demo", rng_array((1, 10)), model_version=1.5)
            except errors.InvalidArgumentError as error:
                return result.model_version, type(error)
            return result.model_version, None

    assert asyncio.run(calls()) == ("1", errors.InvalidArgumentError)


def test_a_single_input_model_refuses_a_wrong_input_name_in_process() -> None:
    model = hs.load_model(named_input_model())
    assert model.input_names == ("spot",)
    expected = hs.gradient(model, X)
    np.testing.assert_array_equal(hs.gradient(model, {"spot": X}), expected)
    for wrong in ("x", "vol"):
        with pytest.raises(errors.UnknownInputError) as raised:
            hs.gradient(model, {wrong: X})
        assert raised.value.field == f"x[{wrong}]"
        assert "its inputs are ['spot']" in raised.value.message


def test_a_single_input_model_refuses_a_wrong_input_name_over_the_wire(
    client: hessd.Client, server: RunningServer
) -> None:
    expected = hs.hessian(server.model("spot"), X)
    np.testing.assert_array_equal(client.hessian("spot", X), expected)
    np.testing.assert_array_equal(client.hessian("spot", {"spot": X}), expected)
    with pytest.raises(errors.UnknownInputError) as raised:
        client.hessian("spot", {"vol": X})
    assert (raised.value.field, raised.value.reason) == ("x[vol]", "UNKNOWN_INPUT")
    np.testing.assert_array_equal(client.hessian("spot", X), expected)


def test_a_raw_request_may_key_a_lone_array_by_the_empty_or_the_legacy_key(
    server: RunningServer,
) -> None:
    expected = hs.gradient(server.model("spot"), X)
    with grpc.insecure_channel(server.target) as channel:
        stub = hessian_service_pb2_grpc.HessianServiceStub(channel)
        for key in ("", "x", "spot"):
            reply = stub.Gradient(pb.GradientRequest(model_name="spot", x={key: tensor_codec.encode(X, field="x")}))
            np.testing.assert_array_equal(tensor_codec.decode(reply.gradient, field="gradient"), expected)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Gradient(pb.GradientRequest(model_name="spot", x={"rate": tensor_codec.encode(X, field="x")}))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert type(status_codes.from_rpc_error(raised.value)) is errors.UnknownInputError
