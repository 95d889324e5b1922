"""Shared by every test folder: this folder is on ``sys.path`` (pytest's rootdir
conftest), so tests import their helpers from the ``support`` package
(``from support.wire_fixtures import serving``).

Servers that tests only call are started once per session here; a test that
changes its server's state (stops it, holds its engine, reconfigures it, counts
its traffic) starts its own instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from support.wire_fixtures import RunningServer


@pytest.fixture(scope="session")
def models_server() -> Iterator[RunningServer]:
    """One in-process server of the demo and the test models
    (``support.wire_fixtures.SHARED_MODELS``), shared by every module that only calls it."""
    from support.wire_fixtures import shared_models_server  # imports TensorFlow: only when asked for

    with shared_models_server() as running:
        yield running
