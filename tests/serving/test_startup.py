"""Start-up: the warm-up an operator names (methods, precisions, by flag or a
repository model's config.toml) leaves nothing to compile on the first calls over the
wire, a name that is not known stops the start with a message that lists the known
ones, and the line that says a version is ready stays one short line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd_server.engine.config import DEFAULT_WARMUP_METHODS, DEFAULT_WARMUP_PRECISIONS
from hessd_server.serving.main import parse_config
from hessd_server.serving.repository.repository_config import parse_model_config
from hessd_server.serving.server_config import ServerConfig
from support.wire_fixtures import RunningServer, rng_array, serving, write_version

WAIT_S = 60.0
READY_LINE_LIMIT = 160
"""Characters the "ready" log line may have: a name, a version and four numbers."""


def test_warmed_methods_at_a_warmed_precision_compile_nothing_on_their_first_calls_over_the_wire() -> None:
    plan = {"warmup_methods": ("hessian_trace", "gradient"), "warmup_precisions": ("float64",)}
    with serving([("demo", hs.DEMO_MODEL_SOURCE)], **plan) as running:
        model = running.model("demo")
        warmed = model.metadata().compile_count
        x = rng_array((2, 10))
        with hessd.Client(running.target, timeout=WAIT_S) as client:
            trace = client.hessian_trace("demo", x, precision="float64", seed=3)
            gradient = client.gradient("demo", x, precision="float64")
            assert model.metadata().compile_count == warmed
            client.gradient("demo", x)
            assert model.metadata().compile_count == warmed + 1, "float32 was not warmed"
    assert trace.trace.dtype == np.float64 and gradient.dtype == np.float64
    np.testing.assert_allclose(gradient, hs.gradient(model, x, precision="float64"), rtol=1e-12)


def test_the_warmup_flags_build_the_config() -> None:
    defaults = parse_config([])
    assert (defaults.warmup_methods, defaults.warmup_precisions) == (DEFAULT_WARMUP_METHODS, DEFAULT_WARMUP_PRECISIONS)
    config = parse_config(["--warmup-methods", "hessian,hessian_eigen", "--warmup-precisions", "float32,float64"])
    assert config.warmup_methods == ("hessian", "hessian_eigen")
    assert config.warmup_precisions == ("float32", "float64")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--warmup-methods", "hessian,trace"], "unknown warm-up methods ['trace']; known: hessian, evaluate,"),
        (["--warmup-precisions", "float16"], "unknown warm-up precisions ['float16']; known: float32, float64"),
    ],
)
def test_an_unknown_warmup_name_stops_the_start_listing_the_known_ones(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_config(flags)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown warm-up"):
        ServerConfig(warmup_methods=("hessian", "trace"))


def test_a_repository_models_config_names_its_warmup_and_a_bad_name_is_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    write_version(tmp_path, "price", 1)
    (tmp_path / "price" / "config.toml").write_text(
        'warmup_batch_sizes = [2]\nwarmup_methods = ["hessian_trace"]\nwarmup_precisions = ["float64"]\n'
    )
    running = RunningServer(ServerConfig(model_repository=str(tmp_path), repository_poll_seconds=0, listen="127.0.0.1:0"))
    try:
        running.wait_until_serving()
        kinds = {(key.kind.partition("/")[0], key.precision, key.batch) for key in running.model("price").functions}
    finally:
        running.stop()
    assert kinds == {("trace", "float64", 2)}
    with pytest.raises(ValueError, match=r"warmup_methods or warmup_precisions: unknown warm-up methods \['trace'\]"):
        parse_model_config({"warmup_methods": ["trace"]})
    with pytest.raises(ValueError, match="warmup_precisions must be a list"):
        parse_model_config({"warmup_precisions": "float64"})


def test_the_ready_line_is_short_and_the_details_are_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hessd_server.serving.repository.model_loader")
    with serving([("demo", hs.DEMO_MODEL_SOURCE)]):
        pass
    (ready,) = [r for r in caplog.records if "ready in" in r.getMessage()]
    assert ready.levelno == logging.INFO and len(ready.getMessage()) < READY_LINE_LIMIT, ready.getMessage()
    assert "demo" in ready.getMessage() and "compiled functions" in ready.getMessage()
    details = [r for r in caplog.records if r.levelno == logging.DEBUG and "ModelMetadata(" in r.getMessage()]
    assert len(details) == 1
