"""FailureLog: bad requests as rate-limited single lines, server faults always in full."""

from __future__ import annotations

import logging

import pytest

from hessd import errors
from hessd_server.serving.observability.failure_log import FailureLog


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
