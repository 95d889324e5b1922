"""``wrt`` naming several inputs over the wire (``wrt_inputs``), from both SDK
flavours and the ``hessd`` command: the same arrays as the library in-process,
the same refusals, and result sizes judged from every named input."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd import cli, errors, status_codes, tensor_codec
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1 import hessian_service_pb2_grpc
from support.wire_fixtures import RunningServer, rng_array

WRT = ["vol", "spot", "rate"]


def pricing_inputs(batch: int = 3) -> dict[str, np.ndarray]:
    return {
        "spot": rng_array((batch, 2), seed=1),
        "vol": rng_array((batch, 2), seed=2),
        "rate": rng_array((batch, 1), seed=3),
    }


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[hessd.Client]:
    with hessd.Client(server.target, timeout=120) as connected:
        yield connected


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_the_client_returns_what_the_library_returns(
    client: hessd.Client, server: RunningServer, precision: str
) -> None:
    model, x = server.model("pricing"), pricing_inputs()
    options = {"wrt": WRT, "precision": precision}
    hessian = client.hessian("pricing", x, **options)
    assert hessian.shape == (3, 5, 5) and hessian.dtype == precision
    np.testing.assert_array_equal(hessian, hs.hessian(model, x, **options))
    np.testing.assert_array_equal(client.hessian("pricing", x, full=True, **options), hs.hessian(model, x, full=True, **options))
    np.testing.assert_array_equal(client.gradient("pricing", x, **options), hs.gradient(model, x, **options))
    blocks = {"vol": x["vol"], "spot": -x["spot"], "rate": x["rate"]}
    expected = hs.hvp(model, x, blocks, **options)
    np.testing.assert_array_equal(client.hvp("pricing", x, blocks, **options), expected)
    np.testing.assert_array_equal(client.hvp("pricing", x, hessd.join_vector(blocks, {n: x[n].shape[1:] for n in WRT}), **options), expected)
    for got, want in zip(client.evaluate("pricing", x, **options), hs.evaluate(model, x, **options)):
        np.testing.assert_array_equal(got, want)
    diagonal = client.hessian_diagonal("pricing", x, method="exact", **options)
    np.testing.assert_array_equal(diagonal.diagonal, hs.hessian_diagonal(model, x, method="exact", **options).diagonal)


def test_one_name_in_a_list_is_sent_as_wrt_and_keeps_its_shapes(client: hessd.Client, server: RunningServer) -> None:
    x = pricing_inputs()
    assert hessd._protocol.wrt_fields(["spot"]) == {"wrt": "spot"}
    alone = client.hessian("pricing", x, wrt=["spot"])
    assert alone.shape == (3, 2, 2)
    np.testing.assert_array_equal(alone, hs.hessian(server.model("pricing"), x, wrt="spot"))


def test_the_async_client_sends_several_inputs(server: RunningServer) -> None:
    x = pricing_inputs()

    async def calls() -> tuple[np.ndarray, np.ndarray]:
        async with hessd.AsyncClient(server.target, timeout=120) as client:
            return await client.hessian("pricing", x, wrt=WRT), await client.gradient("pricing", x, wrt=WRT)

    hessian, gradient = asyncio.run(calls())
    np.testing.assert_array_equal(hessian, hs.hessian(server.model("pricing"), x, wrt=WRT))
    np.testing.assert_array_equal(gradient, hs.gradient(server.model("pricing"), x, wrt=WRT))


@pytest.mark.parametrize(
    ("model", "wrt", "error_type", "field"),
    [
        ("pricing", ["spot", "spot"], errors.InvalidArgumentError, "wrt"),
        ("pricing", ["spot", "volatility"], errors.UnknownInputError, "wrt"),
        ("multi", ["a", "ids"], errors.DtypeError, "wrt"),
    ],
    ids=["duplicate", "unknown", "integer-input"],
)
def test_a_bad_wrt_list_gets_invalid_argument(
    client: hessd.Client, server: RunningServer, model: str, wrt: list[str], error_type: type, field: str
) -> None:
    x = pricing_inputs() if model == "pricing" else {
        "a": rng_array((2, 3)), "b": rng_array((2, 2, 2)), "ids": np.array([[0, 1], [4, 2]], np.int32)
    }
    with pytest.raises(error_type) as raised:
        client.hessian(model, x, wrt=wrt)
    assert raised.value.field == field
    np.testing.assert_array_equal(client.gradient("pricing", pricing_inputs(), wrt=WRT), hs.gradient(server.model("pricing"), pricing_inputs(), wrt=WRT))


def test_wrt_and_wrt_inputs_together_are_refused(server: RunningServer) -> None:
    x = {name: tensor_codec.encode(array, field=name) for name, array in pricing_inputs().items()}
    request = pb.GradientRequest(model_name="pricing", x=x, wrt="spot", wrt_inputs=["spot", "vol"])
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as raised:
        hessian_service_pb2_grpc.HessianServiceStub(channel).Gradient(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = status_codes.from_rpc_error(raised.value)
    assert type(error) is errors.InvalidArgumentError and error.field == "wrt_inputs"


def test_the_result_size_counts_every_named_input() -> None:
    """Sized from one input, a (B, 5, 5) Hessian would look like (B, 2, 2), and
    the SDK would ask for it in one message its channel may not receive."""
    x = pricing_inputs(batch=300)
    request = hessd._protocol.hessian_request(
        "pricing", x, full=False, output_weights=None, wrt=WRT, precision="float64"
    )
    assert hessd._protocol.result_bytes_bound(request) == 300 * 5 * 5 * 8
    evaluation = hessd._protocol.evaluate_request(
        "pricing", x, full=True, output_weights=None, wrt=WRT, precision=None
    )
    assert hessd._protocol.result_bytes_bound(evaluation) == (300 + 300 * 5 + (300 * 5) ** 2) * 4
    assert hessd._protocol.needs_chunks(request, 300 * 5 * 5 * 8)


def test_the_command_line_takes_several_wrt_names(server: RunningServer, tmp_path: Path) -> None:
    x = pricing_inputs()
    model = server.model("pricing")
    np.savez(tmp_path / "x.npz", **x)
    blocks = {"spot": x["spot"], "vol": 2 * x["vol"]}
    np.savez(tmp_path / "v.npz", **blocks)
    common = ["--target", server.target]
    inputs = ["pricing", "--input", str(tmp_path / "x.npz"), "--wrt", "spot", "vol"]
    assert cli.main([*common, "hessian", *inputs, "--out", str(tmp_path / "h.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "h.npy"), hs.hessian(model, x, wrt=["spot", "vol"]))
    assert cli.main([*common, "hvp", *inputs, "--vector", str(tmp_path / "v.npz"), "--out", str(tmp_path / "hv.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "hv.npy"), hs.hvp(model, x, blocks, wrt=["spot", "vol"]))
