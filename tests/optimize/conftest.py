"""Fixtures of the optimizer tests: one server for the folder, serving the models of
``support.optimize_models``, and the same models in-process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import hessd
import hessd_server as hs
from support.optimize_fixtures import MODELS, Where
from support.wire_fixtures import RunningServer, serving


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    # Unfrozen: the freeze is process-wide, and the tests of freezing need the process to themselves.
    with serving(list(MODELS.items()), freeze_heap=False) as running:
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
