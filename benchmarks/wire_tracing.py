"""What tracing costs a call: ``hessd-server`` with tracing off (the default) beside
``--trace`` with no exporter (``OTEL_TRACES_EXPORTER=none``: every span is made and
ended, none is sent) and with the console exporter (every span serialized, written to
the server's log), taking turns at 1 and 8 callers of B=1 Hessians
(``bench_wire.py --tracing``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from hessd_server.serving.server_process import ServerProcess

from wire_report import Load

TRACING_SERVERS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "tracing off": ((), None),
    "--trace, no exporter": (("--trace",), "none"),
    "--trace, console exporter": (("--trace",), "console"),
}
"""The servers compared, by row label: their flags and their ``OTEL_TRACES_EXPORTER``."""

TRACING_CALLERS = (1, 8)


@contextlib.contextmanager
def traces_exported_by(exporter: str | None) -> Iterator[None]:
    """Inside this block, a server started gets ``OTEL_TRACES_EXPORTER=exporter`` (or none)."""
    before = os.environ.pop("OTEL_TRACES_EXPORTER", None)
    if exporter is not None:
        os.environ["OTEL_TRACES_EXPORTER"] = exporter
    try:
        yield
    finally:
        os.environ.pop("OTEL_TRACES_EXPORTER", None)
        if before is not None:
            os.environ["OTEL_TRACES_EXPORTER"] = before


def tracing_servers(
    stack: contextlib.ExitStack, hessd_server: Callable[..., ServerProcess]
) -> dict[str, ServerProcess]:
    """The servers of :data:`TRACING_SERVERS`, started on ``stack``."""
    servers = {}
    for label, (flags, exporter) in TRACING_SERVERS.items():
        with traces_exported_by(exporter):
            servers[label] = stack.enter_context(hessd_server(*flags))
    return servers


def render_tracing(loads: list[Load]) -> list[str]:
    """The comparison as a Markdown table, each load's rows off first."""
    lines = [
        "## What tracing costs",
        "",
        "| server | callers | calls/s | p50 ms | p99 ms | server CPU ms/call |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in loads:
        lines.append(
            f"| {row.batching} | {row.callers} | {row.throughput:.0f} | {row.percentile_ms(50):.2f} | "
            f"{row.percentile_ms(99):.2f} | {row.cpu_ms_per_call(row.server_cpu_s):.3f} |"
        )
    return lines
