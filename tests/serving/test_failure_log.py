"""FailureLog: bad requests as rate-limited single lines, server faults in full once per fingerprint and window."""

from __future__ import annotations

import logging

import pytest

import hessd
from hessd import errors
from hessd_server.serving.observability import failure_log
from hessd_server.serving.observability.failure_log import FailureLog
from support.wire_fixtures import ManualClock, rng_array, serving


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="failures")
    return caplog


def test_bad_requests_are_single_lines_limited_per_window(logged: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = FailureLog(logging.getLogger("failures"), lines_per_window=3, window_seconds=10, clock=clock)
    bad = errors.TensorEncodingError("x holds 3 bytes\nsecond line", reason="TENSOR_BYTE_COUNT_MISMATCH")
    for _ in range(8):
        log.record("Hessian", bad)
    lines = [record.getMessage() for record in logged.records]
    assert lines == ["Hessian refused INVALID_ARGUMENT TENSOR_BYTE_COUNT_MISMATCH: x holds 3 bytes"] * 3
    assert all(record.levelno == logging.INFO and record.exc_info is None for record in logged.records)
    clock.now = 10.5
    log.record("Gradient", errors.ModelNotFoundError("no model 'a'"))
    assert logged.records[-1].getMessage() == (
        "Gradient refused NOT_FOUND MODEL_NOT_FOUND: no model 'a' (5 more not logged)"
    )


def test_server_faults_are_logged_with_their_traceback_even_when_the_window_is_full(
    logged: pytest.LogCaptureFixture,
) -> None:
    log = FailureLog(logging.getLogger("failures"), lines_per_window=1, clock=Clock())
    log.record("Hessian", errors.ShapeError("bad"))
    log.record("Hessian", errors.ShapeError("bad"))
    for fault in (RuntimeError("boom"), errors.InternalError("no strategy worked")):
        log.record("Evaluate", fault)
    faults = [record for record in logged.records if record.levelno == logging.ERROR]
    assert [str(record.exc_info[1]) for record in faults] == ["boom", "no strategy worked"]
    assert len(logged.records) == 3


def _raised(error: BaseException) -> BaseException:
    """``error`` with a traceback, raised from one place."""
    try:
        raise error
    except BaseException as caught:
        return caught


def test_the_same_fault_is_logged_once_per_window_then_with_its_count(logged: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = FailureLog(logging.getLogger("failures"), window_seconds=10, clock=clock)
    for _ in range(5):
        log.record("Gradient", _raised(RuntimeError("caller-chosen text")))
    assert [record.getMessage() for record in logged.records] == ["Gradient failed unexpectedly"]
    assert logged.records[0].levelno == logging.ERROR and logged.records[0].exc_info is not None
    clock.now = 9.9
    log.record("Gradient", _raised(RuntimeError("again")))
    assert len(logged.records) == 1
    clock.now = 10.0
    log.record("Gradient", _raised(RuntimeError("later")))
    assert logged.records[-1].getMessage() == "Gradient failed unexpectedly (5 more like it not logged)"
    assert str(logged.records[-1].exc_info[1]) == "later"


def test_faults_of_other_methods_types_or_places_are_logged_apart(logged: pytest.LogCaptureFixture) -> None:
    log = FailureLog(logging.getLogger("failures"), window_seconds=10, clock=Clock())
    log.record("Gradient", _raised(RuntimeError("a")))
    log.record("Hessian", _raised(RuntimeError("a")))
    log.record("Gradient", _raised(KeyError("a")))
    log.record("Gradient", _raised(errors.InternalError("a")))
    try:
        raise RuntimeError("raised elsewhere")
    except RuntimeError as elsewhere:
        log.record("Gradient", elsewhere)
    log.record("Gradient", _raised(RuntimeError("a")))
    assert len([record for record in logged.records if record.exc_info]) == 5


def test_a_flood_of_bad_requests_does_not_hold_back_a_fault(logged: pytest.LogCaptureFixture) -> None:
    log = FailureLog(logging.getLogger("failures"), lines_per_window=1, window_seconds=10, clock=Clock())
    for _ in range(50):
        log.record("Hessian", errors.ShapeError("bad"))
    log.record("Hessian", _raised(RuntimeError("boom")))
    assert [record.levelno for record in logged.records] == [logging.INFO, logging.ERROR]


def test_fingerprints_are_bounded(logged: pytest.LogCaptureFixture) -> None:
    log = FailureLog(logging.getLogger("failures"), window_seconds=10, clock=Clock())
    for index in range(failure_log.MAX_FAULT_FINGERPRINTS + 1):
        log.record(f"Method{index}", _raised(RuntimeError("x")))
    log.record("Method0", _raised(RuntimeError("x")))
    assert len(logged.records) == failure_log.MAX_FAULT_FINGERPRINTS + 2


def test_a_server_logs_one_traceback_per_repeated_fault_and_then_its_count(logged: pytest.LogCaptureFixture) -> None:
    logged.set_level(logging.ERROR, logger="hessd_server.requests")
    broken = ("broken", "support.wire_fixtures:broken_model")
    with serving([broken]) as server, hessd.Client(server.target, timeout=60) as client:
        clock = ManualClock()
        server.server.failures.clock = clock
        for _ in range(12):
            with pytest.raises(errors.InternalError):
                client.gradient("broken", rng_array((2, 3)))
        faults = [record for record in logged.records if record.name == "hessd_server.requests"]
        assert [record.getMessage() for record in faults] == ["Gradient failed unexpectedly"]
        assert "deliberate failure" in str(faults[0].exc_info[1])
        clock.advance(server.server.failures.window_seconds)
        with pytest.raises(errors.InternalError):
            client.gradient("broken", rng_array((2, 3)))
        faults = [record for record in logged.records if record.name == "hessd_server.requests"]
        assert faults[-1].getMessage() == "Gradient failed unexpectedly (11 more like it not logged)"
        assert client.health() == "SERVING"
