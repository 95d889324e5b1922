"""The runnable examples in the library's docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "hessd_server",
        "hessd_server.engine.api",
        "hessd_server.engine.config",
        "hessd_server.engine.curvature",
        "hessd_server.engine.model_loading",
        "hessd_server.engine.warmup",
        "hessd_server.engine.function_cache",
        "hessd_server.engine.build_locks",
        "hessd_server.serving.observability.failure_log",
        "hessd.errors",
        "hessd.blocks",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
