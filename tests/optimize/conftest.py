"""Fixtures of the optimizer tests: one server for the folder, serving the models of
``optimize_models``, and the same models in-process."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import hessd
import hessd_server as hs
from wire_fixtures import RunningServer, serving

MODELS = {
    "bowl": "optimize_models:bowl_model",
    "ball": "optimize_models:constrained_model",
    "log": "optimize_models:log_model",
    "multi": "wire_fixtures:multi_input_model",
}


@dataclass(frozen=True)
class Where:
    """How a test reaches a model: over the wire (a client and a name) or in-process."""

    kind: str
    client: hessd.Client | None
    models: dict[str, Any]

    def source(self, name: str) -> tuple[Any, str | None]:
        """``(source, model)`` arguments of the optimizers for model ``name``."""
        if self.client is not None:
            return self.client, name
        return self.models[name], None


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    with serving(list(MODELS.items())) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[hessd.Client]:
    with hessd.Client(server.target) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def in_process_models() -> dict[str, Any]:
    return {name: hs.load_model(source) for name, source in MODELS.items()}


@pytest.fixture(params=["wire", "in_process"])
def where(request: pytest.FixtureRequest, in_process_models: dict[str, Any]) -> Where:
    """Each test using it runs against the server and against the in-process library."""
    if request.param == "wire":
        return Where("wire", request.getfixturevalue("client"), in_process_models)
    return Where("in_process", None, in_process_models)
