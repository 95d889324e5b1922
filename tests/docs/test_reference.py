"""The generated reference pages: fresh from ``make docs-reference``, and complete.

Staleness is checked as for ``make proto`` (``tests/serving/test_proto.py``): the generator
writes into a temporary folder and every page must equal the committed one. Completeness is
checked against sources the generator does not read the same way: the parsers' option
strings, the generated gRPC modules' descriptors, ``reason="..."`` in the source text, and
``__all__``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hessd
import hessd_server
from hessd import cli
from hessd.errors import ERROR_TYPES
from hessd.v1 import hessian_service_pb2, model_admin_pb2, shared_memory_pb2, tensor_pb2
from hessd_server.serving import main as server_main

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "reference"
GENERATOR = REPO / "scripts" / "generate_reference.py"


def _page(name: str) -> str:
    return (REFERENCE / name).read_text()


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_the_committed_reference_pages_are_what_the_generator_writes(tmp_path: Path) -> None:
    env_path = f"{REPO / 'client'}:{REPO / 'server'}"
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=REPO,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    fresh = {path.name: path.read_text() for path in tmp_path.glob("*.md")}
    committed = {path.name: path.read_text() for path in REFERENCE.glob("*.md")}
    assert sorted(fresh) == sorted(committed), "run `make docs-reference` and commit docs/reference/"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"stale reference pages {stale}: run `make docs-reference` and commit them"


def test_every_server_flag_is_in_the_reference() -> None:
    page = _page("server-flags.md")
    flags = _options(server_main._parser())
    assert len(flags) > 30
    missing = sorted(flag for flag in flags if f"`{flag}`" not in page)
    assert missing == []


def test_every_cli_command_and_option_is_in_the_reference() -> None:
    page = _page("cli.md")
    parser = cli._parser()
    sections = re.split(r"^## ", page, flags=re.M)
    missing = [option for option in _options(parser) if f"`{option}`" not in sections[1]]
    for name, command in _subcommands(parser).items():
        section = next((s for s in sections if s.startswith(f"`hessd {name}`")), None)
        assert section is not None, f"no section for `hessd {name}`"
        missing += [f"{name} {option}" for option in _options(command) if f"`{option}`" not in section]
    assert len(_subcommands(parser)) >= 10
    assert missing == []


def test_every_error_reason_and_exception_is_in_the_reference() -> None:
    page = _page("errors.md")
    reasons = {error_type.default_reason for error_type in ERROR_TYPES.values()}
    for root in (REPO / "client" / "hessd", REPO / "server" / "hessd_server"):
        for source in root.rglob("*.py"):
            if "v1" not in source.relative_to(root).parts:
                reasons |= set(re.findall(r'reason="([A-Z0-9_]+)"', source.read_text()))
    assert len(reasons) > 40
    assert sorted(r for r in reasons if f"| `{r}` |" not in page) == []
    assert sorted(name for name in ERROR_TYPES if f"`hessd.{name}`" not in page) == []


def test_every_rpc_message_and_field_is_in_the_reference() -> None:
    page = _page("proto.md")
    missing = []
    for module in (hessian_service_pb2, model_admin_pb2, shared_memory_pb2, tensor_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            if f"service `{service.full_name}`" not in page:
                missing.append(service.full_name)
            missing += [f"{service.name}.{m.name}" for m in service.methods if f"| `{m.name}` |" not in page]
        messages = list(module.DESCRIPTOR.message_types_by_name.values())
        while messages:
            message = messages.pop()
            messages += [m for m in message.nested_types if not m.GetOptions().map_entry]
            if f"`{message.full_name.removeprefix('hessd.v1.')}`" not in page:
                missing.append(message.full_name)
            missing += [f"{message.name}.{f.name}" for f in message.fields if f"| `{f.name}` |" not in page]
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            missing += [value.name for value in enum.values if f"| `{value.name}` |" not in page]
    assert missing == []


@pytest.mark.parametrize(
    ("package", "page"), [(hessd, "python-hessd.md"), (hessd_server, "python-hessd-server.md")]
)
def test_every_public_name_has_an_api_entry(package: object, page: str) -> None:
    text = _page(page)
    names = package.__all__
    assert len(names) > 15
    missing = [name for name in names if f"::: {package.__name__}.{name}\n" not in text]
    assert missing == []
