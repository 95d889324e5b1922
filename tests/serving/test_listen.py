"""How the server takes connections: one process on several addresses (``--listen``
repeated, a unix socket and a TCP port), and connections closed after a maximum age."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

import hessd
import hessd_server as hs
from hessd_server.serving.main import parse_config, serve
from hessd_server.serving.server_config import ModelSpec, ServerConfig
from support.wire_fixtures import RunningServer, console_script, rng_array, serving

WAIT_S = 60.0


def test_a_unix_socket_and_a_tcp_port_serve_the_same_models(tmp_path: Path) -> None:
    socket = f"unix://{tmp_path / 'hessd.sock'}"
    running = RunningServer(
        ServerConfig(
            models=(ModelSpec("demo", hs.DEMO_MODEL_SOURCE),),
            listen=(socket, "127.0.0.1:0"),
            warmup_batch_sizes=(2,),
        )
    )
    try:
        running.wait_until_serving()
        assert running.port > 0
        assert running.server.addresses == (socket, f"127.0.0.1:{running.port}")
        x = rng_array((2, 10))
        answers = []
        for target in running.server.addresses:
            with hessd.Client(target, timeout=WAIT_S) as client:
                assert client.health("hessd.v1.HessianService") == "SERVING"
                answers.append(client.hessian("demo", x))
        assert answers[0].shape == (2, 10, 10)
        np.testing.assert_array_equal(answers[0], answers[1])
    finally:
        running.stop()


def test_an_address_that_cannot_be_bound_exits_1_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unbindable = f"unix://{tmp_path / 'missing-folder' / 'hessd.sock'}"
    config = ServerConfig(listen=("127.0.0.1:0", unbindable))
    with caplog.at_level(logging.ERROR, logger="hessd_server"):
        assert asyncio.run(serve(config)) == 1
    assert f"cannot listen on {unbindable}" in caplog.text


def test_a_second_server_on_a_port_in_use_exits_1_with_one_line_naming_the_port_and_the_flag() -> None:
    with serving(warmup_batch_sizes=(1,)) as first:
        address = first.target
        second = subprocess.run(
            [console_script("hessd-server"), "--listen", address],
            capture_output=True,
            text=True,
            timeout=WAIT_S * 5,
        )
        with hessd.Client(address, timeout=WAIT_S) as client:
            assert client.health("hessd.v1.HessianService") == "SERVING"
    assert second.returncode == 1, second.stderr
    errors = [line for line in second.stderr.splitlines() if " ERROR hessd_server" in line]
    assert len(errors) == 1, second.stderr
    assert f"cannot listen on {address}" in errors[0] and "--reuse-port" in errors[0]
    assert "listening on" not in second.stderr


def test_with_reuse_port_two_servers_bind_one_port_and_without_it_on_one_side_the_bind_fails() -> None:
    with serving(reuse_port=True, warmup_batch_sizes=(1,)) as first:
        shared = ServerConfig(listen=first.target, reuse_port=True, warmup_batch_sizes=(1,))
        second = RunningServer(shared)
        try:
            second.wait_until_serving()
            assert second.port == first.port
        finally:
            second.stop()
        with pytest.raises(RuntimeError, match=f"cannot listen on {first.target}.*--reuse-port"):
            RunningServer(ServerConfig(listen=first.target, warmup_batch_sizes=(1,)))


def test_the_reuse_port_flag_builds_the_config() -> None:
    assert parse_config([]).reuse_port is False
    assert parse_config(["--reuse-port"]).reuse_port is True


def test_a_single_address_string_is_one_address() -> None:
    assert ServerConfig(listen="unix:///run/hessd.sock").listen == ("unix:///run/hessd.sock",)


@pytest.mark.parametrize("listen", [(), ("",), ("127.0.0.1:0", "127.0.0.1:0")])
def test_no_address_an_empty_one_or_a_repeated_one_is_refused(listen: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="listen"):
        ServerConfig(listen=listen)


def test_connections_older_than_the_maximum_age_are_closed_and_the_client_reconnects() -> None:
    states: list[grpc.ChannelConnectivity] = []
    went_idle = threading.Event()

    def record(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state is grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
            went_idle.set()

    with serving([("demo", hs.DEMO_MODEL_SOURCE)], max_connection_age_seconds=0.2) as running:
        with grpc.insecure_channel(running.target) as channel:
            channel.subscribe(record, try_to_connect=True)
            assert went_idle.wait(WAIT_S), f"the connection was never closed: {states}"
            grpc.channel_ready_future(channel).result(timeout=WAIT_S)
            channel.unsubscribe(record)


def test_the_maximum_connection_age_flag() -> None:
    assert parse_config([]).max_connection_age_seconds is None
    assert parse_config(["--max-connection-age-seconds", "300"]).max_connection_age_seconds == 300
    with pytest.raises(SystemExit):
        parse_config(["--max-connection-age-seconds", "0"])
