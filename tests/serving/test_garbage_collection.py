"""The server and the garbage collector: long-lived objects frozen once the models are
loaded, an unloaded version freed nonetheless, the freeze shared by the servers of one
process and lifted by the last, and every collection timed in the server's metrics.

In-process servers on real sockets; what is frozen is read from ``gc`` itself.
"""

from __future__ import annotations

import gc
import logging
import weakref
from pathlib import Path

import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd_server.serving.main import parse_config
from hessd_server.serving.server_config import ModelSpec, ServerConfig
from support.wire_fixtures import RunningServer, serving, write_version

X = np.ones((2, 3), np.float32)
FROZE = "froze"
"""What the server's log line says each time it freezes."""


@pytest.fixture(autouse=True)
def nothing_frozen_before() -> None:
    """Every test here starts from an unfrozen process; a server started elsewhere with
    ``freeze_heap`` still running (a session-scoped fixture) would hold the freeze."""
    assert gc.get_freeze_count() == 0, "a server outside this test holds the freeze: share servers unfrozen"


def walked_ids() -> set[int]:
    """Ids of every object the collector still walks (those outside the permanent generation)."""
    return {id(thing) for thing in gc.get_objects()}


def test_a_serving_server_freezes_its_loaded_models_and_thaws_when_it_stops() -> None:
    with serving([("demo", hs.DEMO_MODEL_SOURCE)]) as running:
        model = running.model("demo")
        walked = walked_ids()
        assert gc.get_freeze_count() > 10_000
        assert id(model) not in walked and id(model.functions) not in walked
        with hessd.Client(running.target, timeout=60) as client:
            hessian = client.hessian("demo", np.ones((2, 10), np.float32))
        np.testing.assert_allclose(hessian, hs.hessian(model, np.ones((2, 10), np.float32)), rtol=1e-6)
    assert gc.get_freeze_count() == 0
    assert id(model) in walked_ids()


def test_without_freeze_heap_nothing_is_frozen() -> None:
    with serving([("demo", hs.DEMO_MODEL_SOURCE)], freeze_heap=False) as running:
        assert gc.get_freeze_count() == 0
        assert id(running.model("demo")) in walked_ids()


def test_the_freeze_lasts_until_the_last_server_of_the_process_stops() -> None:
    with serving([("first", hs.DEMO_MODEL_SOURCE)]):
        with serving([("second", hs.DEMO_MODEL_SOURCE)]) as second:
            model = second.model("second")
        assert gc.get_freeze_count() > 0, "the first server still serves: its freeze must hold"
        assert id(model) not in walked_ids()
    assert gc.get_freeze_count() == 0


def test_an_unloaded_version_is_freed_and_a_reload_that_changes_nothing_does_not_collect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hessd_server.serving.server")
    repository = tmp_path / "repository"
    repository.mkdir()
    write_version(repository, "price", 1, scale=1.0)
    running = RunningServer(
        ServerConfig(
            model_repository=str(repository),
            repository_poll_seconds=0,
            listen="127.0.0.1:0",
            warmup_batch_sizes=(2,),
        )
    )
    try:
        running.wait_until_serving()
        first = weakref.ref(running.model("price").call_for("float32").model)
        assert first() is not None and id(first()) not in walked_ids()
        freezes = sum(FROZE in record.message for record in caplog.records)
        running.run(running.server.reload_repository())
        assert sum(FROZE in record.message for record in caplog.records) == freezes

        write_version(repository, "price", 2, scale=3.0)
        running.run(running.server.reload_repository())
        with hessd.Client(running.target, timeout=60) as client:
            np.testing.assert_allclose(client.gradient("price", X), np.full((2, 3), 3.0))
        assert sum(FROZE in record.message for record in caplog.records) == freezes + 1
        assert first() is None, "version 1 was unloaded, so its Keras model must have been collected"
        assert id(running.model("price")) not in walked_ids()
    finally:
        running.stop()
    assert gc.get_freeze_count() == 0


def test_every_collection_is_timed_by_generation_and_frozen_objects_are_reported() -> None:
    with serving([("demo", hs.DEMO_MODEL_SOURCE)]) as running:
        registry = running.server.metrics.registry

        def collections(generation: int) -> float:
            labels = {"generation": str(generation)}
            return registry.get_sample_value("hessd_gc_pause_seconds_count", labels) or 0.0

        before = [collections(generation) for generation in range(3)]
        gc.collect(1)
        gc.collect(2)
        gc.collect(2)
        after = [collections(generation) for generation in range(3)]
        assert after[1] - before[1] >= 1 and after[2] - before[2] >= 2
        # Between freezes the permanent generation only shrinks (reference counting frees
        # frozen objects at any time), so a live gauge lies between a reading taken just
        # before it and one taken just after.
        frozen_before = gc.get_freeze_count()
        reported = registry.get_sample_value("hessd_gc_frozen_objects")
        frozen_after = gc.get_freeze_count()
        assert frozen_before >= reported >= frozen_after > 0
    gc.collect(2)
    assert collections(2) == after[2], "a stopped server must no longer time collections"


def test_the_flag_turns_freezing_off() -> None:
    assert parse_config([]).freeze_heap is True
    assert parse_config(["--no-freeze-heap"]).freeze_heap is False
    assert ServerConfig(models=(ModelSpec("demo", hs.DEMO_MODEL_SOURCE),)).freeze_heap is True
