"""The model repository, against real ``hessd-server`` processes and temporary repositories:
versions, hot reload under load, edits to a served version, failed versions, policies,
removal, SIGHUP, path escapes, layout errors, a confined config.toml, the ModelAdmin
service and its token, and the SDK's version reporting.

Versions are linear models f(x) = scale * sum(x) on 3 inputs, so a gradient of
``scale`` everywhere tells which version answered. Tests wait on the server's
own reports (ListModels states), never on timers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import hessd
from hessd import cli
from hessd.v1 import model_admin_pb2, model_admin_pb2_grpc
from hessd_server.serving.server_config import ModelSpec, ServerConfig
from hessd_server.serving.server_process import ServerProcess
from support.wire_fixtures import RunningServer, linear_model, serving, write_version

pytestmark = pytest.mark.slow  # child processes that import TensorFlow are the point here

WAIT_S = 120.0
POLL_SECONDS = "0.1"
ADMIN_TOKEN = "admin-secret"
X = np.ones((2, 3), np.float32)


def states(client: hessd.Client, name: str) -> dict[str, str]:
    """Version -> state of model ``name`` as ListModels reports it ({} if not listed)."""
    for status in client.model_status():
        if status.name == name:
            return {v.version: v.state for v in status.versions}
    return {}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll the server's reports until ``condition()`` holds; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def gradient_scale(client: hessd.Client, name: str, version: str | None = None) -> float:
    gradient = client.gradient(name, X, model_version=version)
    return float(gradient[0, 0])


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    write_version(root, "price", 1, scale=1.0)
    return root


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "admin-tokens"
    path.write_text(f"\n   {ADMIN_TOKEN}  \n\nanother-admin\n")
    return path


@pytest.fixture(scope="module")
def server(repository: Path, token_file: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        "--model-repository",
        str(repository),
        "--repository-poll-seconds",
        POLL_SECONDS,
        "--warmup-batch-sizes",
        "2",
        "--admin-token-file",
        str(token_file),
    ) as running:
        yield running


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[hessd.Client]:
    with hessd.Client(server.target, timeout=WAIT_S) as connected:
        yield connected


@pytest.fixture()
def admin(server: ServerProcess) -> Iterator[hessd.ModelAdminClient]:
    with hessd.ModelAdminClient(server.target, token=ADMIN_TOKEN, timeout=WAIT_S) as connected:
        yield connected


def test_a_new_version_replaces_the_old_one_while_calls_run_and_none_fails(
    repository: Path, client: hessd.Client, server: ServerProcess
) -> None:
    assert states(client, "price") == {"1": "AVAILABLE"}
    seen: list[list[str]] = [[] for _ in range(4)]
    failures: list[BaseException] = []
    stop = threading.Event()

    def call(record: list[str]) -> None:
        with hessd.Client(server.target, timeout=WAIT_S) as own:
            while not stop.is_set():
                try:
                    gradient, version = own.gradient("price", X, with_version=True)
                except BaseException as error:  # every failure is a finding
                    failures.append(error)
                    return
                assert float(gradient[0, 0]) == {"1": 1.0, "2": 2.0}[version]
                record.append(version)

    callers = [threading.Thread(target=call, args=(record,)) for record in seen]
    for caller in callers:
        caller.start()
    wait_until(
        lambda: bool(failures) or all(record for record in seen), "every caller has been answered"
    )
    write_version(repository, "price", 2, scale=2.0)
    wait_until(
        lambda: bool(failures) or states(client, "price") == {"2": "AVAILABLE"},
        "version 1 is unloaded",
    )
    wait_until(
        lambda: bool(failures) or all(record.count("2") >= 3 for record in seen),
        "every caller got version 2",
    )
    stop.set()
    for caller in callers:
        caller.join(WAIT_S)
    assert not failures
    for record in seen:
        first_two = record.index("2")
        assert set(record[:first_two]) == {"1"} and set(record[first_two:]) == {"2"}, record
    assert gradient_scale(client, "price") == 2.0
    calls = sum(len(record) for record in seen)
    print(f"calls during the swap: {calls}, failed: {len(failures)}")


def test_a_corrupt_version_fails_with_its_error_and_the_previous_one_keeps_serving(
    repository: Path, server: ServerProcess, client: hessd.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    write_version(repository, "curve", 1, scale=1.0)
    wait_until(lambda: states(client, "curve") == {"1": "AVAILABLE"}, "curve 1 serves")
    write_version(repository, "curve", 2, corrupt=True)
    wait_until(lambda: states(client, "curve").get("2") == "FAILED", "curve 2 has failed")
    status = next(s for s in client.model_status() if s.name == "curve")
    failed = next(v for v in status.versions if v.version == "2")
    assert "could not load" in failed.error and "model.keras" in failed.error
    assert states(client, "curve") == {"1": "AVAILABLE", "2": "FAILED"}
    assert cli.main(["--target", server.target, "models", "--versions"]) == 0
    listed = [line.split("\t") for line in capsys.readouterr().out.splitlines() if line.startswith("curve\t")]
    assert listed[0] == ["curve", "1", "AVAILABLE"]
    assert listed[1][:3] == ["curve", "2", "FAILED"] and "could not load" in listed[1][3] and len(listed) == 2
    assert gradient_scale(client, "curve") == 1.0
    with pytest.raises(hessd.ModelNotFoundError, match="FAILED") as pinned:
        client.gradient("curve", X, model_version="2")
    assert pinned.value.field == "model_version"
    assert client.metadata("curve").version_status == status.versions
    # The writer finishes the file in place: the version is retried and serves.
    linear_model(3.0).save(repository / "curve" / "2" / "model.keras")
    wait_until(lambda: states(client, "curve") == {"2": "AVAILABLE"}, "curve 2 is retried")
    assert gradient_scale(client, "curve") == 3.0


def replace_file(repository: Path, path: Path, write: Callable[[Path], None]) -> None:
    """Replace ``path`` whole: ``write`` a hidden file of ``repository``, then rename it over."""
    staged = repository / f".staged-{path.name}"
    write(staged)
    staged.rename(path)


def test_an_edited_version_is_loaded_anew_while_calls_run_and_none_fails(
    repository: Path, server: ServerProcess, client: hessd.Client, admin: hessd.ModelAdminClient
) -> None:
    write_version(repository, "edited", 1, scale=1.0)
    wait_until(lambda: states(client, "edited") == {"1": "AVAILABLE"}, "edited 1 serves")
    assert client.gradient("edited", X, precision="float64").dtype == np.float64
    seen: list[list[float]] = [[] for _ in range(3)]
    failures: list[BaseException] = []
    stop = threading.Event()

    def call(record: list[float]) -> None:
        with hessd.Client(server.target, timeout=WAIT_S) as own:
            while not stop.is_set():
                try:
                    gradient, version = own.gradient("edited", X, with_version=True)
                except BaseException as error:  # every failure is a finding
                    failures.append(error)
                    return
                assert version == "1"
                record.append(float(gradient[0, 0]))

    callers = [threading.Thread(target=call, args=(record,)) for record in seen]
    for caller in callers:
        caller.start()
    wait_until(lambda: bool(failures) or all(seen), "every caller has been answered")
    model = repository / "edited" / "1" / "model.keras"
    replace_file(repository, model, lambda staged: linear_model(3.0).save(staged))
    admin.reload_repository()
    assert gradient_scale(client, "edited", "1") == 3.0
    wait_until(
        lambda: bool(failures) or all(record.count(3.0) >= 3 for record in seen),
        "every caller got the edited version",
    )
    stop.set()
    for caller in callers:
        caller.join(WAIT_S)
    assert not failures
    for record in seen:
        first_new = record.index(3.0)
        assert set(record[:first_new]) == {1.0} and set(record[first_new:]) == {3.0}, record
    assert states(client, "edited") == {"1": "AVAILABLE"}

    (repository / "edited" / "config.toml").write_text('precisions = ["float32"]\n')
    admin.reload_repository()
    with pytest.raises(hessd.PrecisionError, match="allows precision \\['float32'\\] only"):
        client.gradient("edited", X, precision="float64")

    replace_file(repository, model, lambda staged: staged.write_bytes(b"half a keras file"))
    for _ in range(2):
        admin.reload_repository()
    (status,) = [s for s in client.model_status() if s.name == "edited"]
    (version,) = status.versions
    assert version.state == "AVAILABLE" and "its changed files failed to load" in version.error
    assert gradient_scale(client, "edited") == 3.0
    assert server.output().count("model edited: version 1: its changed files FAILED to load") == 1


def test_the_all_policy_serves_every_version_and_a_request_can_pin_one(
    repository: Path, client: hessd.Client
) -> None:
    (repository / ".staging-ledger").mkdir()
    (repository / ".staging-ledger" / "config.toml").write_text(
        'max_batch_size = 4\nprecisions = ["float32"]\nwarmup_batch_sizes = [1]\n'
        "[version_policy]\nall = true\n"
    )
    write_version(repository, ".staging-ledger", 1, scale=1.0)
    write_version(repository, ".staging-ledger", 2, scale=2.0)
    (repository / ".staging-ledger").rename(repository / "ledger")
    wait_until(
        lambda: states(client, "ledger") == {"1": "AVAILABLE", "2": "AVAILABLE"},
        "both ledger versions serve",
    )
    assert gradient_scale(client, "ledger", "1") == 1.0
    assert gradient_scale(client, "ledger", "2") == 2.0
    assert gradient_scale(client, "ledger") == 2.0
    assert client.metadata("ledger", model_version="1").version == "1"
    assert client.metadata("ledger").buckets == (1, 2, 4)
    with pytest.raises(hessd.PrecisionError, match="allows precision \\['float32'\\] only"):
        client.gradient("ledger", X, precision="float64")
    with pytest.raises(hessd.ModelNotFoundError, match="is not served"):
        client.gradient("ledger", X, model_version="7")
    with pytest.raises(hessd.InvalidArgumentError, match="is not a version number") as named:
        client.gradient("ledger", X, model_version="../1")
    assert named.value.reason == "MODEL_VERSION_INVALID"
    with pytest.raises(hessd.InvalidArgumentError, match="'1', not '01'"):
        client.gradient("ledger", X, model_version="01")

    # Removing a version folder unloads that version; the others go on.
    for path in sorted((repository / "ledger" / "2").iterdir()):
        path.unlink()
    (repository / "ledger" / "2").rmdir()
    wait_until(lambda: states(client, "ledger") == {"1": "AVAILABLE"}, "ledger 2 is unloaded")
    assert gradient_scale(client, "ledger") == 1.0
    with pytest.raises(hessd.ModelNotFoundError, match="is not served"):
        client.gradient("ledger", X, model_version="2")


def test_a_new_model_folder_is_served_and_a_removed_one_leaves(
    repository: Path, client: hessd.Client
) -> None:
    write_version(repository, "fresh", 4, scale=4.0)
    wait_until(lambda: states(client, "fresh") == {"4": "AVAILABLE"}, "the new model serves")
    assert gradient_scale(client, "fresh") == 4.0
    assert client.metadata("fresh").outputs[0].name == "price"
    assert client.health() == "SERVING"
    (repository / "fresh" / "4" / "model.keras").unlink()
    (repository / "fresh" / "4").rmdir()
    (repository / "fresh").rmdir()
    wait_until(lambda: "fresh" not in client.models(), "the removed model leaves")
    with pytest.raises(hessd.ModelNotFoundError):
        client.gradient("fresh", X)
    assert client.health() == "SERVING"


def test_health_needs_a_version_of_every_model_that_served(
    repository: Path, client: hessd.Client
) -> None:
    write_version(repository, "solo", 1)
    wait_until(lambda: states(client, "solo") == {"1": "AVAILABLE"}, "solo serves")
    assert client.health() == "SERVING"
    (repository / "solo" / "1").rename(repository / ".solo-1")
    wait_until(lambda: client.health() == "NOT_SERVING", "health reports the missing model")
    assert states(client, "solo") == {}
    assert client.health("hessd.v1.HessianService") == "NOT_SERVING"
    assert gradient_scale(client, "price") > 0  # the other models go on serving
    (repository / ".solo-1").rename(repository / "solo" / "1")
    wait_until(lambda: client.health() == "SERVING", "health recovers")
    assert states(client, "solo") == {"1": "AVAILABLE"}


def test_paths_leading_outside_the_repository_are_refused(
    repository: Path,
    client: hessd.Client,
    admin: hessd.ModelAdminClient,
    tmp_path: Path,
) -> None:
    outside = write_version(tmp_path, "elsewhere", 1)
    (repository / "escape").symlink_to(tmp_path / "elsewhere")
    (repository / "hop").mkdir()
    (repository / "hop" / "1").symlink_to(outside)
    (repository / "leak").mkdir()
    (repository / "leak" / "1").mkdir()
    (repository / "leak" / "1" / "model.keras").symlink_to(outside / "model.keras")
    admin.reload_repository()
    listed = {status.name: status for status in client.model_status()}
    assert "outside the repository" in listed["escape"].error and not listed["escape"].versions
    for name in ("hop", "leak"):
        (version,) = listed[name].versions
        assert version.state == "FAILED" and "outside the repository" in version.error
        with pytest.raises(hessd.ModelNotFoundError, match="FAILED"):
            client.gradient(name, X, model_version="1")
    for name in ("../elsewhere", str(tmp_path / "elsewhere"), "..", "a/b"):
        with pytest.raises(hessd.InvalidArgumentError, match="not a model name"):
            admin.load_model(name)
    for path in ("escape", "hop/1", "leak/1/model.keras"):
        (repository / path).unlink()
    for path in ("hop", "leak/1", "leak"):
        (repository / path).rmdir()
    admin.reload_repository()
    assert not {"escape", "hop", "leak"} & set(client.models())


def test_admin_calls_need_the_token(server: ServerProcess, client: hessd.Client) -> None:
    before = states(client, "price")
    with pytest.raises(ValueError, match="whitespace"):
        hessd.ModelAdminClient(server.target, token=f" {ADMIN_TOKEN}x")
    for token in ("wrong", ADMIN_TOKEN + "x"):
        with hessd.ModelAdminClient(server.target, token=token, timeout=WAIT_S) as intruder:
            with pytest.raises(hessd.UnauthenticatedError, match="admin-token-file") as refused:
                intruder.unload_model("price")
            assert refused.value.reason == "TOKEN_INVALID"
            with pytest.raises(hessd.UnauthenticatedError):
                intruder.reload_repository()
    with grpc.insecure_channel(server.target) as channel:
        stub = model_admin_pb2_grpc.ModelAdminStub(channel)
        with pytest.raises(grpc.RpcError) as padded:
            stub.UnloadModel(
                model_admin_pb2.UnloadModelRequest(model_name="price"),
                metadata=(("authorization", f"Bearer  {ADMIN_TOKEN}x"),),
            )
        assert padded.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as missing:
            stub.UnloadModel(model_admin_pb2.UnloadModelRequest(model_name="price"))
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "--admin-token-file" in missing.value.details()
    assert states(client, "price") == before and "price" in client.models()
    with hessd.ModelAdminClient(server.target, token="another-admin", timeout=WAIT_S) as second:
        assert {status.name for status in second.reload_repository()} >= {"price"}


def test_the_async_admin_client_reloads_loads_and_sends_its_token(server: ServerProcess) -> None:
    async def calls() -> tuple[list[hessd.ModelStatus], hessd.ModelStatus, hessd.HessdError]:
        async with hessd.AsyncModelAdminClient(
            server.target, token=ADMIN_TOKEN, timeout=WAIT_S
        ) as admin:
            reloaded = await admin.reload_repository()
            loaded = await admin.load_model("price")
        async with hessd.AsyncModelAdminClient(server.target, token="wrong", timeout=WAIT_S) as intruder:
            try:
                await intruder.reload_repository()
            except hessd.HessdError as error:
                return reloaded, loaded, error
        raise AssertionError("a wrong admin token was accepted")

    reloaded, loaded, refused = asyncio.run(calls())
    assert "price" in {status.name for status in reloaded}
    assert loaded.name == "price" and "AVAILABLE" in {v.state for v in loaded.versions}
    assert isinstance(refused, hessd.UnauthenticatedError) and refused.reason == "TOKEN_INVALID"


def test_admin_unload_holds_against_reloads_until_load(
    repository: Path, client: hessd.Client, admin: hessd.ModelAdminClient
) -> None:
    write_version(repository, "held", 1, scale=5.0)
    outcome = {status.name: status for status in admin.reload_repository()}
    assert outcome["held"].versions == (hessd.VersionStatus("1", "AVAILABLE"),)
    admin.unload_model("held")
    assert "held" not in client.models()
    with pytest.raises(hessd.ModelNotFoundError):
        client.gradient("held", X)
    assert "held" not in {status.name for status in admin.reload_repository()}
    assert "held" not in client.models()
    loaded = admin.load_model("held")
    assert loaded.available == ("1",)
    assert gradient_scale(client, "held") == 5.0
    with pytest.raises(hessd.ModelNotFoundError, match="no model folder"):
        admin.load_model("nowhere")
    with pytest.raises(hessd.ModelNotFoundError):
        admin.unload_model("nowhere")


def test_the_sdk_reports_the_version_of_every_result(
    repository: Path, server: ServerProcess, client: hessd.Client
) -> None:
    write_version(repository, "versioned", 7, scale=7.0)
    wait_until(lambda: states(client, "versioned") == {"7": "AVAILABLE"}, "versioned 7 serves")
    v = np.ones_like(X)
    assert isinstance(client.gradient("versioned", X), np.ndarray)
    hessian, version = client.hessian("versioned", X, with_version=True)
    assert version == "7" and hessian.shape == (2, 3, 3)
    gradient = client.gradient("versioned", X, with_version=True)
    assert gradient.model_version == "7" and float(gradient.result[0, 0]) == 7.0
    assert client.hvp("versioned", X, v, with_version=True).model_version == "7"
    evaluation, version = client.evaluate("versioned", X, with_version=True)
    assert version == "7" and evaluation.value.shape == (2,)
    assert client.evaluate("versioned", X, full=True, with_version=True).model_version == "7"
    items = [X, np.ones((3, 4), np.float32), X]
    streamed = list(client.stream("versioned", items, with_version=True, return_errors=True))
    assert [item.model_version for item in (streamed[0], streamed[2])] == ["7", "7"]
    assert isinstance(streamed[1], hessd.ShapeError)
    tiny = [("grpc.max_receive_message_length", 66_000)]  # below a result + envelope
    with hessd.Client(server.target, timeout=WAIT_S, options=tiny) as small:
        chunked, version = small.hessian(
            "versioned", np.ones((64, 3), np.float32), with_version=True
        )
        evaluated, evaluated_version = small.evaluate(
            "versioned", np.ones((64, 3), np.float32), with_version=True
        )
    assert version == evaluated_version == "7" and chunked.shape == (64, 3, 3)
    metadata = client.metadata("versioned")
    assert metadata.version == "7" and metadata.outputs[0].name == "price"
    assert metadata.version_status == (hessd.VersionStatus("7", "AVAILABLE"),)

    async def async_calls() -> list[object]:
        async with hessd.AsyncClient(server.target, timeout=WAIT_S) as async_client:
            statuses = await async_client.model_status()
            assert next(s for s in statuses if s.name == "versioned").available == ("7",)
            described = await async_client.metadata("versioned", model_version="7")
            assert described.version == "7"
            streamed = [
                item
                async for item in async_client.stream("versioned", [X], with_version=True)
            ]
            return [
                await async_client.hessian("versioned", X, with_version=True),
                await async_client.gradient("versioned", X, model_version="7", with_version=True),
                await async_client.hvp("versioned", X, v, with_version=True),
                await async_client.evaluate("versioned", X, with_version=True),
                *streamed,
            ]

    async_results = asyncio.run(async_calls())
    assert [result.model_version for result in async_results] == ["7"] * 5


def test_sighup_reloads_model_flags_serve_version_1_and_metrics_follow_versions(
    tmp_path: Path,
) -> None:
    write_version(tmp_path, "price", 1, scale=1.0)
    with ServerProcess(
        "--model-repository",
        str(tmp_path),
        "--repository-poll-seconds",
        "0",
        "--warmup-batch-sizes",
        "1",
        "--model",
        "demo=hessd_server.engine.demo_model:build_demo_model",
        "--metrics-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--unsafe-deserialization",
    ) as server, hessd.Client(server.target, timeout=WAIT_S) as client:
        assert "--unsafe-deserialization: .keras files may run arbitrary Python" in server.output()
        assert client.models() == ["demo", "price"]
        demo, version = client.hessian("demo", np.ones((1, 10), np.float32), with_version=True)
        assert version == "1" and demo.shape == (1, 10, 10)
        assert states(client, "demo") == {"1": "AVAILABLE"}
        write_version(tmp_path, "price", 2, scale=2.0)
        write_version(tmp_path, "demo", 2, scale=2.0)
        write_version(tmp_path, "broken", 1, corrupt=True)
        assert states(client, "price") == {"1": "AVAILABLE"}
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: states(client, "price") == {"2": "AVAILABLE"}, "SIGHUP loaded price 2")
        assert states(client, "broken") == {"1": "FAILED"}
        metrics = scrape_metrics(server)
        assert 'hessd_model_version_state{model="price",state="AVAILABLE",version="2"} 1.0' in metrics
        assert 'hessd_model_version_state{model="broken",state="FAILED",version="1"} 1.0' in metrics
        assert 'model="price",state="AVAILABLE",version="1"' not in metrics
        assert 'hessd_model_load_failures_total{model="broken"} 1.0' in metrics
        for phase in ("load", "warmup"):
            assert f'hessd_model_{phase}_duration_seconds{{model="price",version="2"}}' in metrics
        assert states(client, "demo") == {"1": "AVAILABLE"}
        assert client.hessian("demo", np.ones((1, 10), np.float32), with_version=True)[1] == "1"
        assert "repository folder demo is ignored" in server.output()
        edited = tmp_path / "price" / "2" / "model.keras"
        replace_file(tmp_path, edited, lambda staged: linear_model(5.0).save(staged))
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: gradient_scale(client, "price") == 5.0, "SIGHUP reloaded price 2")
        assert "model price: version 2 AVAILABLE from its changed files" in server.output()
        with pytest.raises(hessd.HessdError, match="UNIMPLEMENTED"):
            with hessd.ModelAdminClient(server.target, token=ADMIN_TOKEN) as admin:
                admin.reload_repository()
        assert server.terminate() == 0, server.output()


def scrape_metrics(server: ServerProcess) -> str:
    """The server's /metrics page, at the port its log names."""
    match = re.search(r"metrics on (http://\S+/metrics)", server.output())
    assert match, server.output()
    with urllib.request.urlopen(match.group(1), timeout=WAIT_S) as page:
        return page.read().decode()


@pytest.mark.parametrize("with_repository", [True, False], ids=["fixed_model", "no_repository"])
def test_admin_refusals_name_their_reason(tmp_path: Path, with_repository: bool) -> None:
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(ADMIN_TOKEN + "\n")
    repository = tmp_path / "repository"
    repository.mkdir()
    config = ServerConfig(
        models=(ModelSpec("demo", "hessd_server.engine.demo_model:build_demo_model"),),
        listen="127.0.0.1:0",
        warmup_batch_sizes=(1,),
        admin_token_file=str(tokens),
        model_repository=str(repository) if with_repository else None,
    )
    running = RunningServer(config)
    try:
        running.wait_until_serving()
        with hessd.ModelAdminClient(running.target, token=ADMIN_TOKEN, timeout=WAIT_S) as admin:
            with pytest.raises(hessd.InvalidArgumentError) as refused:
                admin.unload_model("demo")
            expected = "MODEL_NOT_ADMINISTERED" if with_repository else "MODEL_REPOSITORY_NOT_CONFIGURED"
            assert (refused.value.reason, refused.value.field) == (expected, "model_name")
            if with_repository:
                with pytest.raises(hessd.InvalidArgumentError) as named:
                    admin.load_model("../demo")
                assert named.value.reason == "MODEL_NAME_INVALID"
    finally:
        running.stop()


def _save_model(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    linear_model(1.0).save(path)


def test_a_repository_with_no_servable_model_is_not_serving_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.WARNING, logger="hessd_server")
    repository = tmp_path / "repository"
    _save_model(repository / "flat.keras")
    _save_model(repository / "pricing" / "model.keras")
    _save_model(repository / "rates" / "v1" / "model.keras")
    _save_model(repository / "rates" / "01" / "model.keras")
    _save_model(repository / "deep" / "1" / "sub" / "model.keras")
    (repository / "tuned").mkdir()
    (repository / "tuned" / "config.toml").write_text("colour = 'red'\n")
    write_version(repository, "tuned", 1)
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(ADMIN_TOKEN)
    with serving(
        model_repository=str(repository), repository_poll_seconds=0, admin_token_file=str(tokens)
    ) as running, hessd.Client(running.target, timeout=WAIT_S) as client, hessd.ModelAdminClient(
        running.target, token=ADMIN_TOKEN, timeout=WAIT_S
    ) as admin:
        assert client.health() == "NOT_SERVING"
        listed = {status.name: status for status in client.model_status()}
        assert sorted(listed) == ["deep", "flat.keras", "pricing", "rates", "tuned"]
        problems = {name: status.layout_errors for name, status in listed.items()}
        assert problems["flat.keras"][0].endswith("move it to flat/1/flat.keras")
        assert problems["pricing"][0].startswith("pricing/model.keras lies directly in the model")
        assert [problem.split(" ")[0] for problem in problems["rates"]] == ["rates/01", "rates/v1"]
        for name in ("flat.keras", "pricing", "rates"):
            assert not listed[name].versions and listed[name].error is None
            assert all("NAME/VERSION/model.keras" in problem for problem in problems[name])
        (deep,) = listed["deep"].versions
        assert deep.state == "FAILED" and "sub/model.keras lies in a sub-folder" in deep.error
        assert "unknown keys ['colour']" in listed["tuned"].error and not listed["tuned"].versions
        with pytest.raises(hessd.ModelNotFoundError) as refused:
            client.gradient("pricing", X)
        assert "it has no versions (pricing/model.keras lies directly" in refused.value.message
        assert "a repository model is laid out as NAME/VERSION/model.keras" in refused.value.message
        assert cli.main(["--target", running.target, "models", "--versions"]) == 0
        printed = [line.split("\t")[:3] for line in capsys.readouterr().out.splitlines()]
        assert printed.count(["rates", "-", "LAYOUT_ERROR"]) == 2
        assert ["tuned", "-", "FOLDER_ERROR"] in printed and ["deep", "1", "FAILED"] in printed

        for _ in range(3):
            admin.reload_repository()
        (repository / "tuned" / "config.toml").write_text("colour = 'blue'\n")  # still wrong
        for _ in range(2):
            admin.reload_repository()
        logged = [record.getMessage() for record in caplog.records]
        for name, found in problems.items():
            for problem in found:
                assert logged.count(f"model {name}: layout error: {problem}") == 1, logged
        assert sum("model tuned: config.toml: unknown keys" in line for line in logged) == 2
        assert sum("yields no servable model" in line for line in logged) == 1
        assert client.health() == "NOT_SERVING"

        (repository / "pricing" / "1").mkdir()
        (repository / "pricing" / "model.keras").rename(repository / "pricing" / "1" / "a.keras")
        admin.reload_repository()
        assert client.health() == "SERVING"
        assert gradient_scale(client, "pricing") == 1.0
        assert not {s.name: s for s in client.model_status()}["pricing"].layout_errors


def test_a_config_leading_outside_or_not_a_file_is_refused_without_its_content(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "repository"
    secret = tmp_path / "secret.toml"
    secret.write_text("token = 'hunter2-do-not-echo'\n")
    repository.mkdir()
    for name in ("leaky", "piped", "served"):
        write_version(repository, name, 1)
    (repository / "leaky" / "config.toml").symlink_to(secret)
    os.mkfifo(repository / "piped" / "config.toml")
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(ADMIN_TOKEN)
    with serving(
        model_repository=str(repository), repository_poll_seconds=0, admin_token_file=str(tokens)
    ) as running, hessd.Client(running.target, timeout=WAIT_S) as client, hessd.ModelAdminClient(
        running.target, token=ADMIN_TOKEN, timeout=WAIT_S
    ) as admin:
        reloaded = {status.name: status for status in admin.reload_repository()}
        listed = {status.name: status for status in client.model_status()}
        assert reloaded == listed
        assert listed["leaky"].error == (
            "config.toml leads outside the repository; symlinks must stay inside it"
        )
        assert listed["piped"].error.startswith("config.toml is not a regular file")
        for name in ("leaky", "piped"):
            assert not listed[name].versions
            with pytest.raises(hessd.ModelNotFoundError):
                client.gradient(name, X)
        assert "hunter2" not in repr(listed)
        assert client.health() == "SERVING" and gradient_scale(client, "served") == 1.0
