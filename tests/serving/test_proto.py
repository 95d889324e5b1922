"""Generated code: fresh from ``make proto``, and compatible with the runtimes it needs."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import google.protobuf
import grpc
import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "client" / "hessd" / "v1"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _gencode_versions() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(protobuf gencode version, grpcio version the stubs need) read from the generated code."""
    pb2 = (GENERATED / "hessian_service_pb2.py").read_text()
    grpc_stubs = (GENERATED / "hessian_service_pb2_grpc.py").read_text()
    protobuf_version = re.search(r"^# Protobuf Python Version: ([\d.]+)$", pb2, re.M)
    grpc_version = re.search(r"^GRPC_GENERATED_VERSION = '([\d.]+)'$", grpc_stubs, re.M)
    assert protobuf_version and grpc_version
    return _version(protobuf_version.group(1)), _version(grpc_version.group(1))


def _lower_bound(requirement_name: str) -> tuple[int, ...]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for requirement in pyproject["project"]["dependencies"]:
        match = re.fullmatch(rf"{requirement_name}\s*>=\s*([\d.]+)(,.*)?", requirement)
        if match:
            return _version(match.group(1))
    raise AssertionError(f"pyproject.toml has no lower bound for {requirement_name}")


def test_committed_generated_code_is_what_make_proto_writes(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "-o",
            ".venv/.installed",
            "proto",
            f"PY={sys.executable}",
            f"PROTO_OUT={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    fresh = tmp_path / "hessd" / "v1"
    names = sorted(path.name for path in fresh.iterdir())
    committed = sorted(path.name for path in GENERATED.iterdir() if path.is_file())
    assert committed == names, "client/hessd/v1 has files make proto does not write"
    _, mismatched, missing = filecmp.cmpfiles(fresh, GENERATED, names, shallow=False)
    assert not mismatched and not missing, (
        f"stale generated code {mismatched + missing}: run make proto"
    )


def test_generated_code_imports_cleanly_under_the_installed_runtime() -> None:
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("error")
        from hessd.v1 import hessian_service_pb2, hessian_service_pb2_grpc, tensor_pb2
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_installed_runtimes_satisfy_the_generated_code() -> None:
    protobuf_gencode, grpc_gencode = _gencode_versions()
    protobuf_runtime = _version(google.protobuf.__version__)
    assert protobuf_runtime[0] == protobuf_gencode[0] and protobuf_runtime >= protobuf_gencode
    assert _version(grpc.__version__) >= grpc_gencode


@pytest.mark.parametrize("package", ["protobuf", "grpcio"])
def test_declared_lower_bounds_satisfy_the_generated_code(package: str) -> None:
    protobuf_gencode, grpc_gencode = _gencode_versions()
    needed = protobuf_gencode if package == "protobuf" else grpc_gencode
    assert _lower_bound(package) >= needed, (
        f"pyproject.toml allows {package} below {'.'.join(map(str, needed))}, which the "
        "generated code in client/hessd/v1 refuses at import"
    )
