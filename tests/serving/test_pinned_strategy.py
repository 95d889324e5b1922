"""``--strategy``: a server (or a repository model's ``config.toml``) pins the
per-example Hessian strategy instead of autotuning it, so replicas agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from support.wire_fixtures import RunningServer, rng_array

import hessd
import hessd_server as hs
from hessd_server.engine import EngineConfig
from hessd_server.serving.main import parse_config
from hessd_server.serving.repository.repository_config import parse_model_config
from hessd_server.serving.server_config import ModelSpec, ServerConfig

WAIT_S = 60.0


def test_the_strategy_flag_builds_the_engine_config() -> None:
    assert parse_config([]).engine_config().strategy is None
    assert parse_config(["--strategy", "auto"]).engine_config().strategy is None
    assert parse_config(["--strategy", "structural"]).engine_config().strategy == "structural"
    with pytest.raises(SystemExit):
        parse_config(["--strategy", "fastest"])
    with pytest.raises(ValueError, match="strategy must be one of"):
        ServerConfig(strategy="fastest")


def test_a_model_config_pins_or_unpins_the_servers_strategy() -> None:
    pinned = EngineConfig(strategy="pfor")
    assert parse_model_config({"strategy": "structural"}).engine_config(pinned).strategy == "structural"
    assert parse_model_config({"strategy": "auto"}).engine_config(pinned).strategy is None
    assert parse_model_config({}).engine_config(pinned).strategy == "pfor"
    with pytest.raises(ValueError, match="strategy must be one of"):
        parse_model_config({"strategy": "fastest"})
    with pytest.raises(ValueError, match="strategy must be one of"):
        parse_model_config({"strategy": ["pfor"]})


@pytest.mark.parametrize("strategy", ["pfor", "structural"])
def test_servers_with_a_pinned_strategy_use_it_and_agree_bit_for_bit(strategy: str) -> None:
    x = rng_array((2, 10))
    answers = []
    for _ in range(2):
        running = RunningServer(
            ServerConfig(
                models=(ModelSpec("demo", hs.DEMO_MODEL_SOURCE),),
                listen="127.0.0.1:0",
                warmup_batch_sizes=(2,),
                warmup_methods=("hessian",),  # the only method asked for, and the one a strategy is pinned for
                strategy=strategy,
            )
        )
        try:
            running.wait_until_serving()
            with hessd.Client(running.target, timeout=WAIT_S) as client:
                metadata = client.metadata("demo")
                answers.append(client.hessian("demo", x))
        finally:
            running.stop()
        assert metadata.strategy == strategy
        assert [t.strategy for t in metadata.strategy_timings if t.outcome == "chosen"] == [strategy]
        assert all(t.seconds is None for t in metadata.strategy_timings)
        assert {t.source for t in metadata.strategy_timings} == {"pinned"}
    np.testing.assert_array_equal(answers[0], answers[1])
    reference = hs.hessian(hs.load_model(hs.DEMO_MODEL_SOURCE), x)
    np.testing.assert_allclose(answers[0], reference, rtol=1e-5, atol=1e-6)
