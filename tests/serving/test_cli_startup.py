"""``hessd-server --help``, ``--version`` and flag errors answer without loading
TensorFlow, Keras or the server stack, while the library's names still resolve to
what they always were.

Each check runs in a fresh interpreter (the test process has TensorFlow loaded
already). The console script runs with ``PYTHONPROFILEIMPORTTIME=1``, so its stderr
lists every module it imported; the list must name ``hessd_server.serving.main`` (the
check can see imports) and nothing of TensorFlow's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from support.wire_fixtures import console_script

import hessd_server as hs
from hessd._version import __version__
from support import engine_references as refs

HEAVY_MODULES = ("tensorflow", "keras", "hessd_server.serving.server", "hessd_server.engine.api")
"""Modules (and their submodules) that answering flags must not import."""

TF_LOG_MARKERS = ("cudart_stub", "absl::InitializeLog", "oneDNN", "cpu_feature_guard")
"""Text of TensorFlow's start-up log lines."""

IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$")


def _run(args: list[str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **extra_env}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES))


@pytest.mark.parametrize(
    ("flags", "exit_code", "expected"),
    [
        (["--help"], 0, "usage: hessd-server"),
        (["--version"], 0, f"hessd-server {__version__}"),
        (["--max-batch-size", "many"], 2, "--max-batch-size: invalid int value"),
        (["--warmup-methods", "nope"], 2, "unknown warm-up methods ['nope']"),
        (["--strategy", "nope"], 2, "--strategy: invalid choice"),
    ],
)
def test_the_console_script_answers_flags_without_tensorflow(flags: list[str], exit_code: int, expected: str) -> None:
    result = _run([console_script("hessd-server"), *flags], PYTHONPROFILEIMPORTTIME="1")
    assert result.returncode == exit_code, result.stderr[-2000:]
    assert expected in result.stdout + result.stderr
    imported = {match.group(1) for line in result.stderr.splitlines() if (match := IMPORT_LINE.match(line))}
    assert "hessd_server.serving.main" in imported
    assert _heavy(imported) == []
    assert [marker for marker in TF_LOG_MARKERS if marker in result.stderr] == []


@pytest.mark.parametrize("flags", [["--help"], ["--version"], ["--listen"]])
def test_main_parses_flags_without_tensorflow(flags: list[str]) -> None:
    program = (
        "import json, sys\n"
        "from hessd_server.serving.main import main\n"
        "try:\n"
        f"    main({flags!r})\n"
        "except SystemExit as stop:\n"
        "    print(json.dumps({'code': stop.code, 'modules': sorted(sys.modules)}))\n"
    )
    result = _run([sys.executable, "-c", program])
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == (2 if flags == ["--listen"] else 0)
    assert _heavy(set(report["modules"])) == []


def test_importing_the_package_loads_no_tensorflow_until_a_library_name_is_used() -> None:
    program = (
        "import json, sys\n"
        "import hessd_server as hs\n"
        "before = 'tensorflow' in sys.modules\n"
        "hs.hessian\n"
        "print(json.dumps({'before': before, 'after': 'tensorflow' in sys.modules}))\n"
    )
    result = _run([sys.executable, "-c", program])
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"before": False, "after": True}


def test_warmup_is_the_function_even_after_its_submodule_is_imported() -> None:
    program = (
        "import hessd_server.engine.warmup as module\n"
        "import hessd_server as hs\n"
        "from hessd_server.serving.repository import model_loader\n"
        "assert hs.warmup is module.warmup, hs.warmup\n"
        "assert model_loader.warmup is module.warmup, model_loader.warmup\n"
        "print('ok')\n"
    )
    result = _run([sys.executable, "-c", program])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"


def test_every_exported_name_resolves_to_what_its_module_defines() -> None:
    import hessd.results
    import hessd_server.engine.api as api
    import hessd_server.engine.warmup as warmup_module

    assert hs.__all__[0] == "__version__"
    for name in hs.__all__[1:]:
        value = getattr(hs, name)
        assert value is hs.engine.exported(name), name
        assert not isinstance(value, type(os)), f"hs.{name} is a module"
        assert name in dir(hs)
    assert hs.warmup is warmup_module.warmup
    assert hs.hessian is api.hessian
    assert hs.Trace is hessd.results.Trace
    with pytest.raises(AttributeError, match="'hessd_server' has no attribute 'hessain'"):
        hs.hessain  # noqa: B018


def test_hessian_through_the_lazy_name_matches_the_analytic_hessian() -> None:
    a = np.random.default_rng(5).normal(size=(4, 3))
    model = hs.load_model(refs.quadratic_model(a))
    x = np.random.default_rng(6).normal(size=(2, 4)).astype(np.float64)
    blocks = hs.hessian(model, x, precision="float64")
    np.testing.assert_allclose(blocks, np.broadcast_to(2 * a @ a.T, (2, 4, 4)), rtol=1e-5, atol=1e-5)


def test_the_flag_names_are_the_engine_strategies() -> None:
    from hessd_server.engine.config import STRATEGY_NAMES
    from hessd_server.engine.strategies import STRATEGIES

    assert tuple(STRATEGIES) == STRATEGY_NAMES
