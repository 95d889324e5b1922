"""The parts behind the model repository, each on its own: config.toml parsing,
confinement and version policies, scanning a repository folder (layout errors,
fingerprints), and the registry's states, version names and draining."""

from __future__ import annotations

import gc
import os
import re
import threading
import time
import weakref
from pathlib import Path

import pytest

import hessd
from hessd_server.engine import EngineConfig
from hessd_server.serving.observability.metrics import Metrics
from hessd_server.serving.repository.model_loader import ModelLoader
from hessd_server.serving.repository.model_registry import ModelRegistry
from hessd_server.serving.repository.model_repository import EXPECTED_LAYOUT, scan, scan_model
from hessd_server.serving.repository.repository_config import (
    CONFIG_MAX_BYTES,
    ModelConfig,
    VersionPolicy,
    parse_model_config,
    read_model_config,
)
from support.wire_fixtures import write_version


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy(), {5}),
        (VersionPolicy("latest", count=2), {3, 5}),
        (VersionPolicy("all"), {1, 3, 5}),
        (VersionPolicy("specific", versions=frozenset({1, 4})), {1}),
    ],
)
def test_version_policies_select(policy: VersionPolicy, expected: set[int]) -> None:
    assert policy.select([3, 1, 5]) == expected


def test_a_config_sets_engine_options_warmup_precisions_and_policy() -> None:
    config = parse_model_config(
        {
            "max_batch_size": 8,
            "jit_compile": False,
            "warmup_batch_sizes": [1, 4],
            "precisions": ["float32"],
            "version_policy": {"latest": 3},
        }
    )
    assert config.version_policy == VersionPolicy("latest", count=3)
    assert config.warmup_batch_sizes == (1, 4) and config.precisions == ("float32",)
    engine = config.engine_config(EngineConfig(max_result_bytes=99))
    assert (engine.max_batch_size, engine.jit_compile, engine.max_result_bytes) == (8, False, 99)
    assert parse_model_config({}) == ModelConfig()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_batch_sise": 8}, "unknown keys \\['max_batch_sise'\\]"),
        ({"max_batch_size": 6}, "power of two"),
        ({"max_batch_size": True}, "max_batch_size must be a positive integer"),
        ({"warmup_batch_sizes": 4}, "warmup_batch_sizes must be a list"),
        ({"precisions": ["float16"]}, "precisions must be"),
        ({"version_policy": {"latest": 1, "all": True}}, "exactly one of"),
        ({"version_policy": {"newest": 1}}, "exactly one of"),
        ({"version_policy": {"latest": 0}}, "version_policy.latest must be a positive"),
        ({"version_policy": {"all": 1}}, "version_policy.all must be true"),
        ({"version_policy": {"specific": []}}, "at least one version"),
    ],
)
def test_a_bad_config_is_refused_naming_the_key(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_model_config(table)


def test_an_unreadable_config_names_the_file(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    (tmp_path / "config.toml").write_text("max_batch_size = [")
    with pytest.raises(ValueError, match="cannot read config.toml"):
        read_model_config(tmp_path / "config.toml", root)
    (tmp_path / "config.toml").write_bytes(b"max_batch_size = 8 # \xff")
    with pytest.raises(ValueError, match="cannot read config.toml: it is not UTF-8 text"):
        read_model_config(tmp_path / "config.toml", root)
    assert read_model_config(tmp_path / "absent.toml", root) == ModelConfig()


SECRET = "api_key = 'hunter2-outside-the-repository'"


def _make_config(kind: str, path: Path, outside: Path) -> None:
    if kind == "symlink out":
        outside.write_text(SECRET)
        path.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "oversized":
        path.write_text("# padding\n" * (CONFIG_MAX_BYTES // 10 + 1))
    elif kind == "folder":
        path.mkdir()
    elif kind == "dangling symlink":
        path.symlink_to(outside.with_name("nowhere.toml"))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("symlink out", "config.toml leads outside the repository; symlinks must stay inside it"),
        ("fifo", "config.toml is not a regular file"),
        ("oversized", f"config.toml holds 65,[0-9]{{3}} bytes, more than the {CONFIG_MAX_BYTES:,}"),
        ("folder", "config.toml is not a regular file"),
        ("dangling symlink", "config.toml leads outside the repository"),
    ],
)
def test_a_config_is_confined_to_the_repository_and_refused_without_its_content(
    tmp_path: Path, kind: str, message: str
) -> None:
    root = tmp_path / "repository"
    _file(root / "price" / "1" / "model.keras")
    _make_config(kind, root / "price" / "config.toml", tmp_path / "outside.toml")
    (folder,) = scan(root).values()
    assert folder.error is not None and re.search(message, folder.error), folder.error
    assert "hunter2" not in folder.error and not folder.versions
    with pytest.raises(ValueError, match=message):
        read_model_config(root / "price" / "config.toml", root.resolve())


def test_a_config_may_be_a_symlink_that_stays_inside(tmp_path: Path) -> None:
    _file(tmp_path / "shared.toml", "max_batch_size = 8")
    _file(tmp_path / "price" / "1" / "model.keras")
    (tmp_path / "price" / "config.toml").symlink_to(tmp_path / "shared.toml")
    folder = scan(tmp_path)["price"]
    assert folder.error is None and folder.config.max_batch_size == 8


def _file(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_scanning_finds_versions_and_says_what_is_wrong_with_a_folder(tmp_path: Path) -> None:
    _file(tmp_path / "price" / "1" / "model.keras")
    _file(tmp_path / "price" / "2" / "saved_model.pb")
    _file(tmp_path / "price" / "2" / "variables" / "variables.index")
    (tmp_path / "price" / "3").mkdir()  # being created: not a version yet
    _file(tmp_path / "price" / "4" / "a.keras")
    _file(tmp_path / "price" / "4" / "b.keras")
    _file(tmp_path / "price" / "5" / "notes.txt")
    _file(tmp_path / "price" / "07" / "model.keras")  # not a version name
    _file(tmp_path / "price" / "latest" / "model.keras")
    _file(tmp_path / ".hidden" / "1" / "model.keras")
    _file(tmp_path / "stray.keras")
    _file(tmp_path / "broken" / "config.toml", "colour = 'red'")
    _file(tmp_path / "broken" / "1" / "model.keras")
    (tmp_path / "price" / "2" / "variables" / "loop").symlink_to(tmp_path / "price" / "2")
    folders = scan(tmp_path)
    assert sorted(folders) == ["broken", "price", "stray.keras"]
    assert folders["stray.keras"].layout_errors == (
        "stray.keras lies in the repository itself; a model is laid out as "
        f"{EXPECTED_LAYOUT}: move it to stray/1/stray.keras",
    )
    assert not folders["stray.keras"].versions
    price = folders["price"]
    assert sorted(price.versions) == [1, 2, 4, 5]
    assert price.versions[1].source == tmp_path / "price" / "1" / "model.keras"
    assert price.versions[2].source == tmp_path / "price" / "2"
    assert "2 .keras files" in price.versions[4].error
    assert "neither a .keras file nor a SavedModel" in price.versions[5].error
    assert "unknown keys ['colour']" in folders["broken"].error
    misplaced = [problem.split(" ")[0] for problem in price.layout_errors]
    assert misplaced == ["price/07", "price/latest"]
    assert all(" is not a version folder; " in problem for problem in price.layout_errors)
    assert scan_model(tmp_path, "absent") is None
    for name in ("..", "../price", "/etc", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="not a model name"):
            scan_model(tmp_path, name)


@pytest.mark.parametrize(
    ("files", "where"),
    [
        (("pricing/model.keras",), "pricing/model.keras lies directly in the model folder"),
        (("pricing/saved_model.pb",), "pricing/saved_model.pb lies directly in the model folder"),
        (("pricing/v1/model.keras",), "pricing/v1 is not a version folder"),
        (("pricing/01/model.keras",), "pricing/01 is not a version folder"),
        (
            ("pricing/0/saved_model.pb", "pricing/0/variables/v.index"),
            "pricing/0 is not a version folder",
        ),
    ],
)
def test_model_files_out_of_layout_are_layout_errors_naming_the_layout(
    tmp_path: Path, files: tuple[str, ...], where: str
) -> None:
    for name in files:
        _file(tmp_path / name)
    _file(tmp_path / "pricing" / "notes" / "readme.txt")  # no model: not an error
    (folder,) = scan(tmp_path).values()
    assert folder.error is None and not folder.versions
    (problem,) = folder.layout_errors
    assert problem.startswith(where) and EXPECTED_LAYOUT in problem


def test_a_model_file_in_a_sub_folder_of_a_version_is_not_its_model(tmp_path: Path) -> None:
    _file(tmp_path / "price" / "1" / "sub" / "model.keras")
    _file(tmp_path / "price" / "2" / "model.keras")
    _file(tmp_path / "price" / "2" / "extra" / "other.keras")  # beside a model: ignored
    versions = scan(tmp_path)["price"].versions
    assert versions[1].source is None
    assert versions[1].error == (
        "version folder 1 holds neither a .keras file nor a SavedModel (saved_model.pb); "
        "sub/model.keras lies in a sub-folder, which is not loaded: a model is laid out as "
        f"{EXPECTED_LAYOUT}, so move its files up into price/1/"
    )
    assert versions[2].source == tmp_path / "price" / "2" / "model.keras"


def test_a_version_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "price" / "1").mkdir(parents=True)
    os.mkfifo(tmp_path / "price" / "1" / "model.keras")
    (version,) = scan(tmp_path)["price"].versions.values()
    assert version.source is None
    assert version.error == (
        "price/1/model.keras is not a regular file (a FIFO, socket or device); remove it"
    )


def test_a_fingerprint_sees_a_replaced_file_and_a_changed_setting_only(tmp_path: Path) -> None:
    model = tmp_path / "price" / "1" / "model.keras"
    _file(model, "one")
    before = scan(tmp_path)["price"].versions[1].fingerprint
    _file(tmp_path / ".staged.keras", "two")  # same size, then the same times: a new inode
    stamp = model.stat()
    os.utime(tmp_path / ".staged.keras", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    (tmp_path / ".staged.keras").rename(model)
    replaced = scan(tmp_path)["price"].versions[1].fingerprint
    assert replaced != before
    _file(tmp_path / "price" / "config.toml", "# only a comment\n[version_policy]\nall = true\n")
    assert scan(tmp_path)["price"].versions[1].fingerprint == replaced
    _file(tmp_path / "price" / "config.toml", 'precisions = ["float64"]\n')
    assert scan(tmp_path)["price"].versions[1].fingerprint != replaced


def test_a_fingerprint_changes_with_the_files_and_the_config(tmp_path: Path) -> None:
    _file(tmp_path / "price" / "1" / "model.keras", "one")
    before = scan(tmp_path)["price"].versions[1].fingerprint
    assert scan(tmp_path)["price"].versions[1].fingerprint == before
    _file(tmp_path / "price" / "1" / "model.keras", "one, rewritten")
    rewritten = scan(tmp_path)["price"].versions[1].fingerprint
    assert rewritten != before
    _file(tmp_path / "price" / "config.toml", "max_batch_size = 8")
    assert scan(tmp_path)["price"].versions[1].fingerprint != rewritten


def test_symlinks_out_of_the_repository_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "repository", tmp_path / "outside"
    _file(outside / "1" / "model.keras")
    _file(root / "inner" / "1" / "model.keras")
    (root / "escape").symlink_to(outside)
    _file(root / "hop" / "placeholder")
    (root / "hop" / "1").symlink_to(outside / "1")
    (root / "leak" / "1").mkdir(parents=True)
    (root / "leak" / "1" / "model.keras").symlink_to(outside / "1" / "model.keras")
    (root / "alias").symlink_to(root / "inner")  # stays inside: allowed
    folders = scan(root)
    assert "outside the repository" in folders["escape"].error
    assert "outside the repository" in folders["hop"].versions[1].error
    assert "leak/1/model.keras leads outside" in folders["leak"].versions[1].error
    assert folders["alias"].versions[1].error is None


@pytest.fixture()
def registry() -> ModelRegistry:
    registry = ModelRegistry(Metrics())
    registry.add_model("price", fixed=False)
    registry.mark_ready()
    return registry


def test_a_request_for_a_version_that_does_not_serve_is_not_found_with_its_state(
    registry: ModelRegistry,
) -> None:
    registry.set_loading("price", 1, fingerprint=None)
    with pytest.raises(hessd.ModelNotFoundError, match="version 1 is LOADING"):
        registry.get("price")
    with pytest.raises(hessd.ModelNotFoundError, match="'1' of model 'price' is LOADING"):
        registry.get("price", "1")
    registry.set_failed("price", 2, "could not load it", fingerprint=None)
    with pytest.raises(hessd.ModelNotFoundError, match="is FAILED \\(could not load it\\)"):
        registry.get("price", "2")
    with pytest.raises(hessd.ModelNotFoundError, match="no model named 'cost'"):
        registry.get("cost")
    assert registry.missing_models() == []


@pytest.mark.parametrize(
    "version", ["01", "007", "+1", " 1", "1.0", "v1", "0", "1" * 19, "x" * 10_000]
)
def test_a_version_is_named_as_its_folder_is(registry: ModelRegistry, version: str) -> None:
    registry.set_available("price", 1, object())  # type: ignore[arg-type]
    with pytest.raises(hessd.InvalidArgumentError, match="is not a version number") as refused:
        registry.get("price", version)
    assert (refused.value.reason, refused.value.field) == ("MODEL_VERSION_INVALID", "model_version")
    assert "'1', not '01'" in refused.value.message and len(refused.value.message) < 400
    assert registry.get("price", "1") is registry.get("price")


def test_a_model_without_versions_names_the_layout_and_what_was_found(
    registry: ModelRegistry,
) -> None:
    with pytest.raises(hessd.ModelNotFoundError, match="has no AVAILABLE version") as bare:
        registry.get("price")
    assert bare.value.message.endswith(
        f"it has no versions; a repository model is laid out as {EXPECTED_LAYOUT}"
    )
    problem = "price/v1 is not a version folder"
    registry.set_folder_problems("price", error=None, layout_errors=(problem,))
    with pytest.raises(hessd.ModelNotFoundError, match="\\(price/v1 is not a version folder\\)"):
        registry.get("price")
    assert registry.describe("price").layout_errors == (problem,)
    assert not registry.any_available() and registry.available_models() == []
    registry.set_available("price", 3, object())  # type: ignore[arg-type]
    assert registry.any_available() and registry.available_models() == ["price"]


def test_draining_waits_for_the_calls_in_flight_and_admits_no_new_one(
    registry: ModelRegistry,
) -> None:
    model = object()
    registry.set_available("price", 1, model)  # type: ignore[arg-type]
    registry.set_available("price", 2, model)  # type: ignore[arg-type]
    with registry.acquired("price", "1") as held:
        assert held.label == "1" and held.in_flight == 1
        drained = threading.Thread(target=registry.drain, args=("price", 1))
        drained.start()
        while registry.describe("price").versions[0].state != "UNLOADING":
            time.sleep(0.01)
        with pytest.raises(hessd.ModelNotFoundError, match="is UNLOADING"):
            registry.get("price", "1")
        assert registry.get("price") is model
        assert drained.is_alive()  # blocked until the held call ends
    drained.join(30)
    assert not drained.is_alive()
    assert registry.describe("price").available == ("2",)
    with pytest.raises(hessd.ModelNotFoundError, match="is not served"):
        registry.get("price", "1")


def test_an_unloaded_version_is_freed(tmp_path: Path) -> None:
    write_version(tmp_path, "price", 1, scale=1.0)
    registry = ModelRegistry(Metrics())
    loader = ModelLoader(
        registry,
        Metrics(),
        engine_config=EngineConfig(jit_compile=False),
        warmup_batch_sizes=(1,),
        safe_mode=True,
        repository=tmp_path,
    )
    loader.reload(explicit=True)
    registry.mark_ready()
    first = weakref.ref(registry.get("price"))
    assert first() is not None and first().metadata().compile_count > 0
    write_version(tmp_path, "price", 2, scale=2.0)
    loader.reload(explicit=True)
    assert registry.describe("price").available == ("2",)
    gc.collect()
    assert first() is None, "version 1 is still referenced after it was unloaded"
