"""The container recipes, linted structurally (building them is documented, not run here):
a slim Python base, the server extra, a numeric non-root user that the manifests run as,
``hessd-server`` as entry point on the exposed port, the model volume, no HEALTHCHECK."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from hessd_server.serving.main import parse_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {"Dockerfile": ".[server]", "Dockerfile.gpu": ".[server,gpu]"}
MODEL_VOLUME = "/models"

Instruction = tuple[str, str]


def instructions(text: str) -> list[Instruction]:
    """A Dockerfile's (INSTRUCTION, arguments), comments dropped and continued lines joined."""
    parsed: list[Instruction] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending.append(line.removesuffix("\\").strip())
        if line.endswith("\\"):
            continue
        keyword, _, arguments = " ".join(pending).partition(" ")
        parsed.append((keyword.upper(), arguments.strip()))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return parsed


def test_the_parser_joins_continued_lines_and_drops_comments() -> None:
    text = "# a comment\nFROM base\n\nrun one \\\n    # inside\n    && two\nUSER 1\n"
    assert instructions(text) == [("FROM", "base"), ("RUN", "one && two"), ("USER", "1")]


def _recipe(name: str) -> list[Instruction]:
    return instructions((ROOT / "deploy" / name).read_text())


def _all(recipe: list[Instruction], keyword: str) -> list[str]:
    return [arguments for found, arguments in recipe if found == keyword]


def _last(recipe: list[Instruction], keyword: str) -> str:
    found = _all(recipe, keyword)
    assert found, f"no {keyword}"
    return found[-1]


@pytest.mark.parametrize("name", RECIPES)
def test_a_slim_python_base_installs_the_server_extra(name: str) -> None:
    recipe = _recipe(name)
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", _last(recipe, "FROM"))
    assert any(f"pip install '{RECIPES[name]}'" in run for run in _all(recipe, "RUN"))
    for source in _last(recipe, "COPY").split()[:-1]:
        assert (ROOT / source).exists(), source


def test_the_gpu_extra_is_tensorflow_with_cuda() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(
        requirement.startswith("tensorflow[and-cuda]")
        for requirement in project["optional-dependencies"]["gpu"]
    )


@pytest.mark.parametrize("name", RECIPES)
def test_it_runs_as_the_numeric_non_root_user_the_manifests_name(name: str) -> None:
    recipe = _recipe(name)
    user, _, group = _last(recipe, "USER").partition(":")
    assert user.isdigit() and int(user) != 0 and (not group or int(group) != 0)
    assert recipe.index(("USER", _last(recipe, "USER"))) > max(
        index for index, (keyword, _) in enumerate(recipe) if keyword == "RUN"
    ), "a RUN after USER would run as that user"
    for manifest in ("sidecar.yaml", "standalone.yaml"):
        with (ROOT / "deploy" / "kubernetes" / manifest).open() as stream:
            deployment = next(d for d in yaml.safe_load_all(stream) if d["kind"] == "Deployment")
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == int(user)


@pytest.mark.parametrize("name", RECIPES)
def test_hessd_server_is_the_entry_point_on_the_exposed_port(name: str) -> None:
    recipe = _recipe(name)
    entry_point = json.loads(_last(recipe, "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry_point[0] == "hessd-server" and entry_point[0] in scripts
    config = parse_config([*entry_point[1:], *json.loads(_last(recipe, "CMD"))])
    assert config.listen == ("0.0.0.0:50051",)
    assert _all(recipe, "EXPOSE") == ["50051"]
    # By default it serves the model repository on the volume.
    assert config.model_repository == MODEL_VOLUME


@pytest.mark.parametrize("name", RECIPES)
def test_models_are_a_volume_and_health_is_left_to_the_orchestrator(name: str) -> None:
    recipe = _recipe(name)
    assert MODEL_VOLUME in json.loads(_last(recipe, "VOLUME"))
    assert not _all(recipe, "HEALTHCHECK")


def run_examples(text: str) -> list[list[str]]:
    """The ``docker run`` commands of a Dockerfile's comments, continued lines joined, as words."""
    commands: list[list[str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip().removeprefix("#").strip()
        if pending or line.startswith("docker run "):
            pending += " " + line.removesuffix("\\").strip()
            if not line.endswith("\\"):
                commands.append(shlex.split(pending))
                pending = ""
    return commands


def _published_container_ports(words: list[str]) -> set[int]:
    """Container ports of the ``-p [HOST_IP:][HOST_PORT:]CONTAINER_PORT`` options."""
    return {int(value.rpartition(":")[2]) for flag, value in zip(words, words[1:]) if flag == "-p"}


@pytest.mark.parametrize("name", RECIPES)
def test_every_run_example_publishes_the_ports_it_serves_beyond_the_containers_loopback(name: str) -> None:
    text = (ROOT / "deploy" / name).read_text()
    recipe = instructions(text)
    entry_point = json.loads(_last(recipe, "ENTRYPOINT"))
    examples = run_examples(text)
    assert any("--metrics-port" in words for words in examples), "no example serves /metrics"
    for words in examples:
        image = next(index for index, word in enumerate(words) if word.startswith("hessd:"))
        config = parse_config([*entry_point[1:], *words[image + 1 :]])
        published = _published_container_ports(words)
        for address in config.listen:
            assert int(address.rpartition(":")[2]) in published, words
        if config.metrics_port is not None:
            assert config.metrics_port in published, words
            assert not ipaddress.ip_address(config.metrics_host).is_loopback, (
                "a container's loopback cannot be reached through -p"
            )


@pytest.mark.parametrize("name", RECIPES)
def test_the_recipe_says_the_image_must_be_pushed_where_the_cluster_pulls(name: str) -> None:
    assert "docker push" in (ROOT / "deploy" / name).read_text()
