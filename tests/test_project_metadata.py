"""The project's metadata reads cleanly with the setuptools it asks for: the license
is an SPDX expression, so installing prints no deprecation warning."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SPDX_LICENSE_SETUPTOOLS = Version("77")
"""The first setuptools that reads ``project.license`` as an SPDX expression."""


def test_the_metadata_applies_without_a_warning_and_the_license_is_an_spdx_expression() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distribution = apply_configuration(Distribution(), str(PYPROJECT))
    assert [str(warning.message) for warning in caught] == []
    assert distribution.metadata.license_expression == "Apache-2.0"


def test_the_build_asks_for_a_setuptools_that_reads_spdx_licenses() -> None:
    requires = tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]
    (setuptools,) = (Requirement(r) for r in requires if Requirement(r).name == "setuptools")
    assert setuptools.specifier, "an older setuptools warns about (or refuses) the SPDX license"
    assert not setuptools.specifier.contains("76.1")
    assert setuptools.specifier.contains(str(SPDX_LICENSE_SETUPTOOLS))
