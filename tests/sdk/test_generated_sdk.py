"""The blocking SDK is generated from the asyncio one: fresh from ``make sdk``, and alike."""

from __future__ import annotations

import filecmp
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import hessd

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "client" / "hessd" / "_sync"

FLAVOURS = [
    (hessd.Client, hessd.AsyncClient),
    (hessd.ModelAdminClient, hessd.AsyncModelAdminClient),
]


def test_committed_blocking_sdk_is_what_make_sdk_writes(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "-o",
            ".venv/.installed",
            "sdk",
            f"PY={sys.executable}",
            f"SDK_OUT={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in tmp_path.glob("*.py"))
    committed = sorted(path.name for path in GENERATED.glob("*.py"))
    assert written == committed
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, GENERATED, written, shallow=False)
    assert not mismatch and not errors, f"stale: {mismatch + errors}; run `make sdk`"


@pytest.mark.parametrize(("blocking", "asynchronous"), FLAVOURS)
def test_both_flavours_offer_the_same_documented_methods(
    blocking: type, asynchronous: type
) -> None:
    def public(cls: type) -> dict[str, object]:
        return {name: member for name, member in vars_of(cls).items() if not name.startswith("_")}

    blocking_methods, async_methods = public(blocking), public(asynchronous)
    assert blocking_methods.keys() == async_methods.keys()
    for name, method in async_methods.items():
        twin = blocking_methods[name]
        assert inspect.getdoc(twin) and inspect.getdoc(method), f"{name} has no docstring"
        assert list(inspect.signature(twin).parameters) == list(
            inspect.signature(method).parameters
        ), name
        if name != "secure":
            assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name
            assert not inspect.iscoroutinefunction(twin), name


def vars_of(cls: type) -> dict[str, object]:
    """Every attribute ``cls`` defines or inherits, by name."""
    return {name: getattr(cls, name) for name in dir(cls)}
