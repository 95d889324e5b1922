"""One version, moving with CHANGELOG.md: the changelog's latest release, the build's
version, ``hessd.__version__``, ``hessd_server.__version__``, both command lines'
``--version`` and the version the server reports over a real channel all agree."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import read_configuration

import hessd
import hessd_server as hs
from hessd import cli
from support.wire_fixtures import RunningServer, console_script

ROOT = Path(__file__).resolve().parents[1]
RELEASE_HEADING = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", re.MULTILINE)


def latest_release(changelog: str) -> str:
    """The version of the first ``## [X.Y.Z] - YYYY-MM-DD`` heading, below ``## [Unreleased]``."""
    unreleased = changelog.index("## [Unreleased]")
    release = RELEASE_HEADING.search(changelog)
    assert release is not None, "CHANGELOG.md lists no release"
    assert unreleased < release.start(), "[Unreleased] belongs above the latest release"
    return release.group(1)


@pytest.fixture(scope="module")
def server(models_server: RunningServer) -> RunningServer:
    return models_server


def test_changelog_latest_release_is_the_package_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert latest_release(changelog) == hessd.__version__ == hs.__version__


def test_the_build_reads_the_same_version() -> None:
    project = read_configuration(ROOT / "pyproject.toml", expand=True)["project"]
    assert project["version"] == hessd.__version__


def test_latest_release_skips_unreleased_and_refuses_a_changelog_without_release() -> None:
    changelog = "## [Unreleased]\n\n- x\n\n## [2.3.4] - 2027-01-02\n\n## [2.3.3] - 2026-01-01\n"
    assert latest_release(changelog) == "2.3.4"
    with pytest.raises(AssertionError, match="no release"):
        latest_release("## [Unreleased]\n\n- x\n")
    with pytest.raises(AssertionError, match="above"):
        latest_release("## [1.0.0] - 2026-01-01\n\n## [Unreleased]\n")


def test_server_reports_its_version_over_the_wire(server: RunningServer) -> None:
    with hessd.Client(server.target) as client:
        assert client.server_version() == hessd.__version__


def test_async_client_reads_the_same_version(server: RunningServer) -> None:
    async def version() -> str:
        async with hessd.AsyncClient(server.target) as client:
            return await client.server_version()

    assert asyncio.run(version()) == hessd.__version__


def test_cli_server_version_prints_it(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--target", server.target, "server-version"]) == 0
    assert capsys.readouterr().out.strip() == hessd.__version__


@pytest.mark.parametrize("script", ["hessd", "hessd-server"])
def test_version_flag_prints_the_version(script: str) -> None:
    result = subprocess.run(
        [console_script(script), "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{script} {hessd.__version__}"
