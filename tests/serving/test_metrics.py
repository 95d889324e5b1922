"""The server's Prometheus metrics, read back from their registry."""

from __future__ import annotations

import grpc
import pytest

from hessd_server.serving.observability.metrics import Metrics


def test_each_request_counts_under_its_own_method_and_code() -> None:
    metrics, other = Metrics(), Metrics()
    calls = [
        ("Hessian", grpc.StatusCode.OK, 0.25),
        ("Hessian", grpc.StatusCode.INVALID_ARGUMENT, 0.5),
        ("Hessian", grpc.StatusCode.OK, 0.125),
        ("Gradient", grpc.StatusCode.OK, 1.0),
        ("Hessian", grpc.StatusCode.OK, 2.0),
    ]
    for method, code, seconds in calls:
        metrics.observe_request(method, code, seconds)
    other.observe_request("Hessian", grpc.StatusCode.OK, 4.0)

    def value(registry: Metrics, name: str, method: str, code: str) -> float | None:
        return registry.registry.get_sample_value(name, {"method": method, "code": code})

    assert value(metrics, "hessd_requests_total", "Hessian", "OK") == 3
    assert value(metrics, "hessd_requests_total", "Hessian", "INVALID_ARGUMENT") == 1
    assert value(metrics, "hessd_requests_total", "Gradient", "OK") == 1
    assert value(metrics, "hessd_requests_total", "Gradient", "INVALID_ARGUMENT") is None
    assert value(metrics, "hessd_request_duration_seconds_count", "Hessian", "OK") == 3
    assert value(metrics, "hessd_request_duration_seconds_sum", "Hessian", "OK") == pytest.approx(2.375)
    assert value(metrics, "hessd_request_duration_seconds_sum", "Gradient", "OK") == pytest.approx(1.0)
    assert value(other, "hessd_requests_total", "Hessian", "OK") == 1
    assert value(other, "hessd_request_duration_seconds_sum", "Hessian", "OK") == pytest.approx(4.0)


def test_batches_count_by_reason_and_size() -> None:
    metrics = Metrics()
    for reason, examples in [("idle", 1), ("full", 32), ("idle", 2), ("delay", 5)]:
        metrics.observe_batch(reason, examples)
    value = metrics.registry.get_sample_value
    assert [value("hessd_batches_total", {"reason": r}) for r in ("idle", "full", "delay")] == [2, 1, 1]
    assert value("hessd_batch_size_count") == 4
    assert value("hessd_batch_size_sum") == 40
