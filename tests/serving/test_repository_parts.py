"""The parts behind the model repository, each on its own: config.toml parsing and
version policies, scanning a repository folder, and the registry's states and draining."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path

import pytest

import hessd
from hessd_server.engine import EngineConfig
from hessd_server.serving.metrics import Metrics
from hessd_server.serving.model_loader import ModelLoader
from hessd_server.serving.model_registry import ModelRegistry
from hessd_server.serving.model_repository import scan, scan_model
from hessd_server.serving.repository_config import (
    ModelConfig,
    VersionPolicy,
    parse_model_config,
    read_model_config,
)
from wire_fixtures import write_version


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
    (tmp_path / "config.toml").write_text("max_batch_size = [")
    with pytest.raises(ValueError, match="cannot read config.toml"):
        read_model_config(tmp_path / "config.toml")
    assert read_model_config(tmp_path / "absent.toml") == ModelConfig()


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
    assert sorted(folders) == ["broken", "price"]
    price = folders["price"]
    assert sorted(price.versions) == [1, 2, 4, 5]
    assert price.versions[1].source == tmp_path / "price" / "1" / "model.keras"
    assert price.versions[2].source == tmp_path / "price" / "2"
    assert "2 .keras files" in price.versions[4].error
    assert "neither a .keras file nor a SavedModel" in price.versions[5].error
    assert "unknown keys ['colour']" in folders["broken"].error
    assert scan_model(tmp_path, "absent") is None
    for name in ("..", "../price", "/etc", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="not a model name"):
            scan_model(tmp_path, name)


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
    with pytest.raises(hessd.ModelNotFoundError, match="is not served"):
        registry.get("price", "x" * 10_000)
    with pytest.raises(hessd.ModelNotFoundError, match="no model named 'cost'"):
        registry.get("cost")
    assert registry.missing_models() == []


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
