"""The package layout holds its rules: the engine never imports the serving
stack or gRPC, the transport-free parts of serving (the data plane,
scheduling and the repository) never reach gRPC through any chain of imports,
and no module of ``hessd_server`` imports another in a cycle.

Imports are read from the source with ``ast``, wherever they stand (module
level or inside a function), so a deferred import cannot hide a cycle.
Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import hessd
import hessd_server

PACKAGE_ROOT = Path(hessd_server.__file__).parent
SDK_ROOT = Path(hessd.__file__).parent
PACKAGE = "hessd_server"
GRPC_PACKAGES = ("grpc", "grpc_status", "grpc_health", "grpc_reflection")
"""gRPC itself; ``google.rpc``'s status messages are plain protobuf."""
FORBIDDEN_IN_ENGINE = (*GRPC_PACKAGES, "google.rpc", "hessd_server.serving")
TRANSPORT_FREE = ("data_plane", "scheduling", "repository")
"""The subpackages of ``hessd_server.serving`` that must work without gRPC."""
GRPC_FACE = f"{PACKAGE}.serving.grpc"


def _module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    return {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if _is_type_checking_block(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _import_nodes(node)


def imported_names(module: str, path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Absolute names of everything ``module`` imports: for ``from X import y``,
    ``X.y`` when that is one of ``modules`` (a submodule), else ``X``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            names.add(submodule if submodule in modules else base)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ``hessd_server`` it imports (a package counts as its ``__init__``)."""
    modules = _modules()
    return {
        module: {name for name in imported_names(module, path, set(modules)) if name in modules and name != module}
        for module, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target in on_stack:
                return stack[stack.index(target) :] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 20
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_sees_a_deferred_import(tmp_path: Path) -> None:
    source = tmp_path / "model.py"
    source.write_text("def warmup():\n    from .engine import warm\n")
    assert "hessd_server.engine.engine" in imported_names("hessd_server.engine.model", source)
    assert imported_names("hessd_server.engine.model", source, {"hessd_server.engine.engine.warm"}) == {
        "hessd_server.engine.engine.warm"
    }
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_type_checking_imports_are_left_out(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .other import X\n")
    assert imported_names("hessd_server.engine.m", source) == {"typing"}


@pytest.mark.parametrize("module", sorted(name for name in _modules() if name.startswith(f"{PACKAGE}.engine")))
def test_the_engine_never_imports_the_serving_stack(module: str) -> None:
    names = imported_names(module, _modules()[module], set(_modules()))
    offending = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_IN_ENGINE))
    assert offending == [], f"{module} imports {offending}"


def test_the_top_package_is_thin() -> None:
    top = {path.name for path in PACKAGE_ROOT.iterdir() if path.suffix == ".py"}
    assert top == {"__init__.py"}
    assert {path.name for path in PACKAGE_ROOT.iterdir() if (path / "__init__.py").exists()} == {"engine", "serving"}


LAYOUT_PAGE = PACKAGE_ROOT.parents[1] / "docs" / "layout.md"


SUBPACKAGES = sorted(
    str(path.parent.relative_to(PACKAGE_ROOT)) for path in PACKAGE_ROOT.rglob("__init__.py") if path.parent != PACKAGE_ROOT
)


def test_every_serving_part_is_a_subpackage_with_a_row() -> None:
    assert {"engine", "serving", *(f"serving/{part}" for part in TRANSPORT_FREE)} <= set(SUBPACKAGES)


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_the_layout_page_names_every_module(subpackage: str) -> None:
    rows = [line for line in LAYOUT_PAGE.read_text().splitlines() if line.startswith(f"| `server/hessd_server/{subpackage}/`")]
    assert len(rows) == 1, f"docs/layout.md needs one row for server/hessd_server/{subpackage}/"
    modules = sorted(path.stem for path in (PACKAGE_ROOT / subpackage).glob("*.py") if path.stem != "__init__")
    missing = [name for name in modules if f"`{name}`" not in rows[0]]
    assert missing == [], f"docs/layout.md's row for {subpackage}/ does not name {missing}"


def _is_grpc(name: str) -> bool:
    """Whether ``name`` is gRPC itself, generated gRPC stubs, or the server's gRPC face."""
    return (
        any(name == package or name.startswith(package + ".") for package in (*GRPC_PACKAGES, GRPC_FACE))
        or name.endswith("_pb2_grpc")
    )


def grpc_reached(module: str) -> list[str]:
    """Every "importer -> gRPC name" on the import chains from ``module`` through the
    modules of ``hessd_server`` and the SDK (``hessd``). The SDK's package root is not
    followed: it is the client's public face, which ``hessd.errors`` and the codec
    never need."""
    sources = {**_modules(), **_modules(SDK_ROOT)}
    known = set(sources)
    found: list[str] = []
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in sources or name == "hessd":
            continue
        seen.add(name)
        for imported in imported_names(name, sources[name], known):
            if _is_grpc(imported):
                found.append(f"{name} -> {imported}")
            else:
                todo.append(imported)
    return sorted(found)


TRANSPORT_FREE_MODULES = sorted(
    name for name in _modules() if any(name.startswith(f"{PACKAGE}.serving.{part}") for part in TRANSPORT_FREE)
)


def test_every_transport_free_part_exists() -> None:
    parts = {name.split(".")[2] for name in TRANSPORT_FREE_MODULES}
    assert parts == set(TRANSPORT_FREE)


@pytest.mark.parametrize("module", TRANSPORT_FREE_MODULES)
def test_the_transport_free_parts_never_reach_grpc(module: str) -> None:
    assert grpc_reached(module) == []


def test_the_grpc_check_follows_a_chain_of_imports() -> None:
    assert grpc_reached(f"{PACKAGE}.serving.grpc.servicer") != []
    assert f"{PACKAGE}.serving.grpc.servicer -> grpc.aio" in grpc_reached(f"{PACKAGE}.serving.grpc.servicer")
    assert grpc_reached(f"{PACKAGE}.serving.server") != []
    assert _is_grpc("hessd.v1.hessian_service_pb2_grpc") and not _is_grpc("hessd.v1.hessian_service_pb2")


TESTS_ROOT = Path(__file__).resolve().parent
TEST_HELPERS = TESTS_ROOT / "support"


def test_test_helpers_live_in_the_support_package() -> None:
    """Outside ``tests/support/`` the test folders hold only test modules and conftests,
    so a helper has one import path (``support.<module>``) in tests and in child processes."""
    loose = sorted(
        str(path.relative_to(TESTS_ROOT))
        for path in TESTS_ROOT.rglob("*.py")
        if TEST_HELPERS not in path.parents and not path.name.startswith("test_") and path.name != "conftest.py"
    )
    assert loose == [], f"move these helpers into tests/support/: {loose}"
    assert (TEST_HELPERS / "__init__.py").exists()
