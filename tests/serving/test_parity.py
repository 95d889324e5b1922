"""Over the wire, every method returns exactly what the library returns in-process.

The reference is the library called on the server's own loaded model, so both
sides run the same compiled functions and must agree bit for bit, in dtype and
in shape. These tests check the wire (encoding, keywords, routing), not the
numbers: an engine bug shows on both sides alike. The engine tests
(``tests/engine``) hold the independent references: closed forms, float64
finite differences and ``tf.hessians``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd import errors
from support.wire_fixtures import SHARED_MODELS, RunningServer, rng_array

MODELS = [
    ("demo", hs.DEMO_MODEL_SOURCE),
    ("multi", "support.wire_fixtures:multi_input_model"),
    ("conv", "support.wire_fixtures:conv_model"),
]


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[hessd.Client]:
    with hessd.Client(server.target, timeout=120) as sdk:
        yield sdk


def _inputs(model: str, batch: int, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """``x`` and the keywords that pick the differentiated input for ``model``."""
    if model == "demo":
        return rng_array((batch, 10), seed=seed), {}
    if model == "conv":
        return rng_array((batch, 6, 6, 1), seed=seed), {}
    ids = np.random.default_rng(seed).integers(0, 5, size=(batch, 2), dtype=np.int32)
    x = {
        "a": rng_array((batch, 3), seed=seed),
        "b": rng_array((batch, 2, 2), seed=seed + 1),
        "ids": ids,
    }
    return x, {"wrt": "b"}


def _differentiated(x: Any, keywords: dict[str, Any]) -> np.ndarray:
    return x[keywords["wrt"]] if "wrt" in keywords else x


def _assert_identical(remote: Any, local: Any) -> None:
    if isinstance(local, hessd.Evaluation):
        assert isinstance(remote, hessd.Evaluation)
        for remote_part, local_part in zip(remote, local, strict=True):
            _assert_identical(remote_part, local_part)
        return
    assert isinstance(remote, np.ndarray)
    assert remote.dtype == local.dtype and remote.shape == local.shape
    assert np.array_equal(remote, local)


CALLS: dict[str, Callable[[Any, Any, Any, dict[str, Any]], Any]] = {
    "hessian": lambda api, model, x, kw: api.hessian(model, x, **kw),
    "hessian-full": lambda api, model, x, kw: api.hessian(model, x, full=True, **kw),
    "gradient": lambda api, model, x, kw: api.gradient(model, x, **kw),
    "hvp": lambda api, model, x, kw: api.hvp(model, x, 2 * _differentiated(x, kw), **kw),
    "evaluate": lambda api, model, x, kw: api.evaluate(model, x, **kw),
    "evaluate-full": lambda api, model, x, kw: api.evaluate(model, x, full=True, **kw),
}


class _Library:
    """The library with the SDK's call shape: a model name resolves to the server's model."""

    def __init__(self, server: RunningServer) -> None:
        self._server = server

    def __getattr__(self, method: str) -> Callable[..., Any]:
        function = getattr(hs, method)
        return lambda model, *args, **kwargs: function(self._server.model(model), *args, **kwargs)


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("model", [name for name, _ in MODELS])
def test_every_method_matches_the_library(
    server: RunningServer, client: hessd.Client, model: str, call: str
) -> None:
    x, keywords = _inputs(model, batch=3)
    remote = CALLS[call](client, model, x, keywords)
    _assert_identical(remote, CALLS[call](_Library(server), model, x, keywords))


@pytest.mark.parametrize("call", ["hessian", "hessian-full", "gradient", "hvp", "evaluate"])
def test_float64_precision_matches(server: RunningServer, client: hessd.Client, call: str) -> None:
    x, keywords = _inputs("demo", batch=2)
    keywords = {**keywords, "precision": "float64"}
    remote = CALLS[call](client, "demo", x, keywords)
    assert (remote.hessian if isinstance(remote, hessd.Evaluation) else remote).dtype == np.float64
    _assert_identical(remote, CALLS[call](_Library(server), "demo", x, keywords))


@pytest.mark.parametrize("shape", ["K", "BK"])
@pytest.mark.parametrize("call", ["hessian", "gradient", "hvp", "evaluate-full"])
def test_output_weights_match(
    server: RunningServer, client: hessd.Client, shape: str, call: str
) -> None:
    x, keywords = _inputs("multi", batch=3)
    weights = np.array([0.5, -2.0], np.float32) if shape == "K" else rng_array((3, 2), seed=5)
    keywords = {**keywords, "output_weights": weights}
    _assert_identical(
        CALLS[call](client, "multi", x, keywords),
        CALLS[call](_Library(server), "multi", x, keywords),
    )


def test_float64_inputs_and_integer_weights_match(
    server: RunningServer, client: hessd.Client
) -> None:
    x = rng_array((2, 10), dtype=np.float64)
    weights = np.array([3], np.int64)
    remote = client.hessian("demo", x, output_weights=weights)
    _assert_identical(remote, hs.hessian(server.model("demo"), x, output_weights=weights))


def test_a_single_input_under_its_name_is_that_input_and_another_name_is_refused(
    server: RunningServer, client: hessd.Client
) -> None:
    x, _ = _inputs("demo", batch=2)
    _assert_identical(client.gradient("demo", {"x": x}), hs.gradient(server.model("demo"), x))
    with pytest.raises(errors.UnknownInputError):
        client.gradient("demo", {"anything": x})


def test_async_client_matches(server: RunningServer) -> None:
    x, _ = _inputs("conv", batch=2)
    v = rng_array(x.shape, seed=9)
    library = _Library(server)

    async def calls() -> list[Any]:
        async with hessd.AsyncClient(server.target, timeout=120) as client:
            return [
                await client.hessian("conv", x),
                await client.hessian("conv", x, full=True),
                await client.gradient("conv", x),
                await client.hvp("conv", x, v),
                await client.evaluate("conv", x),
            ]

    expected = [
        library.hessian("conv", x),
        library.hessian("conv", x, full=True),
        library.gradient("conv", x),
        library.hvp("conv", x, v),
        library.evaluate("conv", x),
    ]
    for remote, local in zip(asyncio.run(calls()), expected, strict=True):
        _assert_identical(remote, local)


def test_models_and_metadata_mirror_the_library(
    server: RunningServer, client: hessd.Client
) -> None:
    assert client.models() == sorted(name for name, _ in SHARED_MODELS)
    for name, _ in MODELS:
        assert client.metadata(name) == _served_metadata(server, name)
    multi = client.metadata("multi")
    assert [(i.name, i.shape, i.dtype) for i in multi.inputs] == [
        ("a", (3,), "float32"),
        ("b", (2, 2), "float32"),
        ("ids", (2,), "int32"),
    ]
    assert multi.batch_independent is True and multi.strategy in ("pfor", "tiled", "forward_over_reverse")
    assert {t.strategy: t.outcome for t in multi.strategy_timings}["structural"] == "refused"
    assert multi.buckets == (1, 2, 4, 8) and multi.compile_count > 0


def test_async_models_metadata_and_health(server: RunningServer) -> None:
    async def calls() -> tuple[Any, ...]:
        async with hessd.AsyncClient(server.target) as client:
            return await client.models(), await client.metadata("demo"), await client.health()

    models, metadata, health = asyncio.run(calls())
    assert models == sorted(name for name, _ in SHARED_MODELS)
    assert metadata == _served_metadata(server, "demo")
    assert health == "SERVING"


def _served_metadata(server: RunningServer, name: str) -> hessd.ModelMetadata:
    """The library's metadata of a ``--model`` model, as served: version "1", AVAILABLE."""
    return dataclasses.replace(
        server.model(name).metadata(),
        version="1",
        version_status=(hessd.VersionStatus("1", "AVAILABLE"),),
    )
