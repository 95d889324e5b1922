"""The scripts of ``benchmarks/`` imported as modules, for their smoke tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
"""The folder of the benchmark scripts."""


def import_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as ``python benchmarks/<name>.py`` would see its
    siblings (the folder on ``sys.path`` while it imports)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
