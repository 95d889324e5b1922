"""Generated code: fresh from ``make proto``, and compatible with the runtimes it needs."""

from __future__ import annotations

import filecmp
import importlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import google.protobuf
import grpc
import pytest
import tomllib
from google.protobuf import descriptor_pb2

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


@pytest.mark.parametrize("name", ["status", "error_details"])
def test_carried_google_rpc_protos_are_the_ones_the_runtime_uses(name: str, tmp_path: Path) -> None:
    """proto/google/rpc holds googleapis' own files: the same contract, license header kept."""
    source = REPO / "proto" / "google" / "rpc" / f"{name}.proto"
    assert "Licensed under the Apache License, Version 2.0" in source.read_text()
    descriptor_set = tmp_path / "set.pb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"--descriptor_set_out={descriptor_set}",
            f"google/rpc/{name}.proto",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    carried = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file[0]
    _drop_json_names(carried.message_type)
    runtime = descriptor_pb2.FileDescriptorProto()
    importlib.import_module(f"google.rpc.{name}_pb2").DESCRIPTOR.CopyToProto(runtime)
    assert carried == runtime


def _drop_json_names(messages: Any) -> None:
    """Clear ``json_name``, which protoc fills in and Python descriptors leave out."""
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)
