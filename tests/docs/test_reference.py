"""The generated reference pages: fresh from ``make docs-reference``, and complete.

Staleness is checked as for ``make proto`` (``tests/serving/test_proto.py``): the generator
writes into a temporary folder and every page must equal the committed one. Completeness is
checked against sources the generator does not read the same way: the parsers' option
strings, the generated gRPC modules' descriptors (one module per ``proto/hessd/v1/*.proto``),
``reason="..."`` in the source text, and the ``__all__`` of every public package. The
hand-written table of ``docs/guides/errors.md`` (reason, exception, cause) is checked
against the code's own pairs, so it cannot drift from the generated one.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import hessd
import hessd.optimize
import hessd_server
from hessd import cli
from hessd.errors import ERROR_TYPES
from hessd_server.serving import main as server_main

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "reference"
GENERATOR = REPO / "scripts" / "generate_reference.py"
PROTO_FILES = sorted((REPO / "proto" / "hessd" / "v1").glob("*.proto"))
SOURCE_ROOTS = (REPO / "client" / "hessd", REPO / "server" / "hessd_server")
GUIDE_ERRORS = REPO / "docs" / "guides" / "errors.md"
GUIDE_ERROR_ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| `hessd\.(\w+)` \|", re.M)


def _page(name: str) -> str:
    return (REFERENCE / name).read_text()


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@functools.cache
def _generator() -> ModuleType:
    """``scripts/generate_reference.py`` as a module, for its package lists and its scan of
    the reasons the code raises."""
    spec = importlib.util.spec_from_file_location("generate_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _public_packages_declaring_all() -> list[str]:
    """Every package under ``hessd`` and ``hessd_server`` whose ``__init__.py`` sets
    ``__all__``, but private (``_``-prefixed) and generated (``v1``) ones."""
    packages = []
    for root in SOURCE_ROOTS:
        for init in root.rglob("__init__.py"):
            parts = (root.name, *init.parent.relative_to(root).parts)
            if "v1" in parts or any(part.startswith("_") for part in parts):
                continue
            if re.search(r"^__all__\b", init.read_text(), re.M):
                packages.append(".".join(parts))
    return sorted(packages)


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


def _reasons_in_the_code() -> set[str]:
    """Every class's default reason and every ``reason="..."`` literal in the source."""
    reasons = {error_type.default_reason for error_type in ERROR_TYPES.values()}
    for root in SOURCE_ROOTS:
        for source in root.rglob("*.py"):
            if "v1" not in source.relative_to(root).parts:
                reasons |= set(re.findall(r'reason="([A-Z0-9_]+)"', source.read_text()))
    return reasons


def test_every_error_reason_and_exception_is_in_the_reference() -> None:
    page = _page("errors.md")
    reasons = _reasons_in_the_code()
    assert len(reasons) > 40
    assert sorted(r for r in reasons if f"| `{r}` |" not in page) == []
    assert sorted(name for name in ERROR_TYPES if f"`hessd.{name}`" not in page) == []


def test_the_errors_guide_gives_each_reason_the_code_s_exception() -> None:
    rows = GUIDE_ERROR_ROW.findall(GUIDE_ERRORS.read_text())
    assert len(rows) > 40
    pairs = {(error_type.default_reason, name) for name, error_type in ERROR_TYPES.items()}
    pairs |= {(raised.reason, raised.exception) for raised in _generator().raised_reasons()}
    wrong = [f"{reason}: hessd.{exception}" for reason, exception in rows if (reason, exception) not in pairs]
    assert wrong == [], "the guide names another exception than the code raises"
    missing = sorted(_reasons_in_the_code() - {reason for reason, _ in rows})
    assert missing == [], "reasons the code raises that the errors guide does not list"


def test_every_rpc_message_and_field_is_in_the_reference() -> None:
    page = _page("proto.md")
    missing = []
    assert len(PROTO_FILES) >= 4
    for proto in PROTO_FILES:
        module = importlib.import_module(f"hessd.v1.{proto.stem}_pb2")
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
    ("package", "page", "at_least"),
    [
        (hessd, "python-hessd.md", 15),
        (hessd.optimize, "python-hessd-optimize.md", 5),
        (hessd_server, "python-hessd-server.md", 15),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_every_public_name_has_an_api_entry(package: object, page: str, at_least: int) -> None:
    text = _page(page)
    names = package.__all__
    assert len(names) >= at_least
    missing = [name for name in names if f"::: {package.__name__}.{name}\n" not in text]
    assert missing == []


def test_every_public_package_s_names_are_in_the_reference() -> None:
    generator = _generator()
    packages = _public_packages_declaring_all()
    assert {"hessd", "hessd.optimize", "hessd_server"} <= set(packages)
    entries = {
        entry for page in REFERENCE.glob("python-*.md") for entry in re.findall(r"^::: (\S+)$", page.read_text(), re.M)
    }
    missing = []
    for package in packages:
        if package in generator.INTERNAL_PACKAGES:
            assert generator.INTERNAL_PACKAGES[package], f"{package}: say why it is no API"
            continue
        home = generator.REEXPORTED_BY.get(package, package)
        names = importlib.import_module(package).__all__
        assert names, f"{package}.__all__ is empty"
        missing += [f"{package}.{name}" for name in names if f"{home}.{name}" not in entries]
    assert missing == [], "add the package to API_PAGES in scripts/generate_reference.py and run `make docs-reference`"
