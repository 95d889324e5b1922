"""``hessd-server --trace --log-format json`` as a process, configured only by the
standard ``OTEL_*`` variables: its spans reach the exporter they name, carrying the
service name they set, and every log line is one JSON object."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

import hessd
from hessd_server.serving.main import parse_config
from hessd_server.serving.server_process import ServerProcess

pytestmark = pytest.mark.slow  # a child process that imports TensorFlow

SPAN = re.compile(r"^\{\n {4}\"name\".*?^\}$", re.MULTILINE | re.DOTALL)
"""A span as the console exporter prints it: an indented JSON object."""


def test_flags_set_tracing_and_the_log_format() -> None:
    config = parse_config(["--trace", "--log-format", "json"])
    assert (config.trace, config.log_format) == (True, "json")
    default = parse_config([])
    assert (default.trace, default.log_format) == (False, "text")
    with pytest.raises(SystemExit):
        parse_config(["--log-format", "xml"])


def test_the_otel_variables_configure_the_server_s_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "hessd-under-test")
    with ServerProcess("--trace", "--log-format", "json") as server:
        with hessd.Client(server.target, timeout=120) as client:
            client.hessian("demo", np.ones((2, 10), np.float32))
            with pytest.raises(hessd.ShapeError) as raised:
                client.gradient("demo", np.ones((2, 3), np.float32))
        assert server.terminate() == 0
        output = server.output()
    spans = [json.loads(match.group(0)) for match in SPAN.finditer(output)]
    by_name = {span["name"]: span for span in spans}
    hessian = by_name["hessd.v1.HessianService/Hessian"]
    assert hessian["resource"]["attributes"]["service.name"] == "hessd-under-test"
    assert by_name["hessd.engine"]["parent_id"] == hessian["context"]["span_id"]
    gradient = by_name["hessd.v1.HessianService/Gradient"]
    assert gradient["attributes"]["hessd.request_id"] == raised.value.request_id
    assert gradient["attributes"]["hessd.error.reason"] == "SHAPE_MISMATCH"
    rest = SPAN.sub("", output)
    lines: list[dict[str, Any]] = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    assert lines and all(set(line) >= {"time", "level", "logger", "message", "request_id"} for line in lines)
    (refused,) = [line for line in lines if line["request_id"] == raised.value.request_id]
    assert refused["trace_id"] == gradient["context"]["trace_id"].removeprefix("0x")
    assert (refused["code"], refused["reason"], refused["method"]) == ("INVALID_ARGUMENT", "SHAPE_MISMATCH", "Gradient")
