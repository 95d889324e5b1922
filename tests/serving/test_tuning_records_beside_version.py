"""Tuning records shipped beside a model version (``<version>/tuning/``): written
by ``hessd-server --write-tuning-records`` (or a library process tuning into
that folder), read by every later server and library process that loads the
version, ahead of ``--tuning-cache`` and behind ``--strategy``; a record that is
corrupt or belongs to another model or machine is refused with a log line and
the rule chooses instead.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from support import engine_references as refs
import hessd
import hessd_server as hs
from support import reproducibility_worker as worker
from hessd_server.engine import tuning_record
from hessd_server.serving.server_config import ServerConfig
from hessd_server.serving.server_process import ServerProcess
from support.reproducibility_worker import WORKER_TIMEOUT_S, run_worker, worker_on_path  # noqa: F401 (a fixture)
from support.wire_fixtures import RunningServer, console_script

pytestmark = pytest.mark.usefixtures("worker_on_path")
BATCH = 8


def _chosen(run: dict[str, np.ndarray]) -> dict[str, list[list[object]]]:
    """Model name -> [batch, strategy, source] of each bucket the run chose."""
    return json.loads(str(run["chosen"]))


@functools.cache
def _saved(name: str) -> bytes:
    """Worker model ``name`` as ``.keras`` bytes, built once: every version of it below is a
    copy, so it has the same fingerprint in every test (a rebuilt model's layer names differ)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch, "model.keras")
        worker.MODELS[name][0]().save(path)
        return path.read_bytes()


def _version(tmp_path: Path, name: str = "mlp10") -> Path:
    """``tmp_path/repository/<name>/1`` holding ``model.keras`` of worker model ``name``."""
    version = tmp_path / "repository" / name / "1"
    version.mkdir(parents=True)
    (version / "model.keras").write_bytes(_saved(name))
    return version


_TUNED: dict[str, tuple[Path, str]] = {}
"""Each model tuned so far in this module, by fingerprint: its record's path inside the
tuning folder and its text."""


def _tuned_into(version: Path, directory: Path) -> Path:
    """Tune ``version``'s model at :data:`BATCH` into ``directory``; the record written. A model
    this module has tuned before (the same fingerprint) gets a copy of its record instead."""
    model = hs.load_model(version / "model.keras", config=hs.EngineConfig(tuning_cache=str(directory), max_batch_size=BATCH))
    if model.fingerprint() not in _TUNED:
        hs.hessian(model, worker.case_input("mlp10", BATCH))
        (tuned,) = directory.rglob("*.json")
        _TUNED[model.fingerprint()] = (tuned.relative_to(directory), tuned.read_text())
    relative, text = _TUNED[model.fingerprint()]
    record = directory / relative
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(text)
    return record


def _set_strategy(record: Path, strategy: str) -> None:
    record.write_text(json.dumps({**json.loads(record.read_text()), "strategy": strategy}))


def _load(version: Path, **settings: object) -> hs.Model:
    return hs.load_model(version / "model.keras", config=hs.EngineConfig(max_batch_size=BATCH, **settings))


def _sources(model: hs.Model) -> set[str]:
    return {t.source for t in model.metadata().strategy_timings}


@functools.cache
def _pinned(strategy: str) -> np.ndarray:
    """The blocks at :data:`BATCH` of a model loaded without records, ``strategy`` pinned
    (computed once per strategy: the model and its input are fixed)."""
    model = hs.load_model(worker.mlp10(), config=hs.EngineConfig(max_batch_size=BATCH, strategy=strategy))
    blocks = hs.hessian(model, worker.case_input("mlp10", BATCH))
    blocks.flags.writeable = False
    return blocks


@pytest.mark.slow
def test_a_fresh_server_reads_the_records_beside_the_version_and_computes_the_recording_processs_bits(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "repository"
    worker.save_repository(repository)
    recorded = run_worker(
        tmp_path / "recorded.npz", "--repository", str(repository), "--record", "--warmup", "1,4,8,16,32", "--busy"
    )
    assert {s for chosen in _chosen(recorded).values() for _, _, s in chosen} == {"tuned"}
    assert all(list((repository / name / "1" / "tuning").rglob("*.json")) for name in worker.MODELS)
    cache = tmp_path / "cache"
    cache.mkdir()
    with ServerProcess(
        "--model-repository", str(repository), "--tuning-cache", str(cache), "--warmup-batch-sizes", "1,8,32",
        "--warmup-methods", ",".join(worker.WARMED_METHODS), startup_timeout=WORKER_TIMEOUT_S,
    ) as server:
        served = worker.from_server(server.target, reverse=True)
    for case in (f"{model}-{batch}" for model, batch in worker.CASES):
        np.testing.assert_array_equal(served[case], recorded[case], err_msg=case)
    assert {s for chosen in _chosen(served).values() for _, _, s in chosen} == {"record"}
    assert not list(cache.iterdir()), "the server tuned a bucket at start-up despite the records"


def test_write_tuning_records_tunes_each_served_version_and_the_library_reads_them(tmp_path: Path) -> None:
    version = _version(tmp_path)
    pinned = _version(tmp_path, "wide")
    (pinned.parent / "config.toml").write_text('strategy = "pfor"\n')
    result = subprocess.run(
        [
            console_script("hessd-server"), "--model-repository", str(tmp_path / "repository"),
            "--write-tuning-records", "--warmup-batch-sizes", "2,8",
        ],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "model mlp10: version 1, batch 8 (float32): strategy" in result.stderr
    assert "model wide: version 1 pins strategy pfor" in result.stderr
    assert len(list((version / "tuning").rglob("*.json"))) == 2
    assert not (pinned / "tuning").exists()
    model = hs.load_model(version / "model.keras")
    for batch in (2, 8):
        hs.hessian(model, worker.case_input("mlp10", batch))
    assert _sources(model) == {"record"}


def test_write_tuning_records_fails_on_a_version_that_cannot_load(tmp_path: Path) -> None:
    version = tmp_path / "repository" / "broken" / "1"
    version.mkdir(parents=True)
    (version / "model.keras").write_bytes(b"half a keras file")
    result = subprocess.run(
        [console_script("hessd-server"), "--model-repository", str(tmp_path / "repository"), "--write-tuning-records"],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert result.returncode == 1
    assert "model broken: version 1 could not be tuned" in result.stderr


def test_the_bucket_takes_the_shipped_records_strategy_whatever_the_rule_prefers(tmp_path: Path) -> None:
    version = _version(tmp_path)
    record = _tuned_into(version, version / "tuning")
    _set_strategy(record, "pfor")  # the rule would take structural
    model = _load(version)
    blocks = hs.hessian(model, worker.case_input("mlp10", BATCH))
    assert model.metadata().strategy == "pfor" and _sources(model) == {"record"}
    np.testing.assert_array_equal(blocks, _pinned("pfor"))


def test_a_pinned_strategy_overrides_the_shipped_record(tmp_path: Path) -> None:
    version = _version(tmp_path)
    _set_strategy(_tuned_into(version, version / "tuning"), "pfor")
    model = _load(version, strategy="structural")
    hs.hessian(model, worker.case_input("mlp10", BATCH))
    assert model.metadata().strategy == "structural" and _sources(model) == {"pinned"}


def test_the_shipped_record_takes_precedence_over_the_tuning_cache(tmp_path: Path) -> None:
    version = _version(tmp_path)
    cache = tmp_path / "cache"
    cached = _tuned_into(version, cache)
    _set_strategy(cached, "structural")
    _set_strategy(_tuned_into(version, version / "tuning"), "pfor")
    before = cached.read_bytes()
    model = _load(version, tuning_cache=str(cache))
    hs.hessian(model, worker.case_input("mlp10", BATCH))
    assert model.metadata().strategy == "pfor" and _sources(model) == {"record"}
    assert [p.read_bytes() for p in cache.rglob("*.json")] == [before]


def test_a_bucket_the_shipped_records_lack_is_tuned_into_the_cache_not_beside_the_version(tmp_path: Path) -> None:
    version = _version(tmp_path)
    _tuned_into(version, version / "tuning")
    shipped = sorted((version / "tuning").rglob("*.json"))
    cache = tmp_path / "cache"
    model = hs.load_model(version / "model.keras", config=hs.EngineConfig(max_batch_size=64, tuning_cache=str(cache)))
    hs.hessian(model, worker.case_input("mlp10", 64))
    assert _sources(model) == {"tuned"}
    assert sorted((version / "tuning").rglob("*.json")) == shipped
    assert len(list(cache.rglob("*.json"))) == 1


def _refused(version: Path, caplog: pytest.LogCaptureFixture, expected: str) -> None:
    """A model loaded from ``version`` takes the rule at :data:`BATCH`, computing the
    rule's bits, and the log says ``expected``."""
    model = _load(version)
    with caplog.at_level(logging.INFO, logger="hessd_server.engine.tuning_record"):
        blocks = hs.hessian(model, worker.case_input("mlp10", BATCH))
    assert _sources(model) == {"rule"}
    np.testing.assert_array_equal(blocks, _pinned(model.metadata().strategy or ""))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(expected in message for message in warnings), warnings


def test_a_corrupt_shipped_record_is_refused_and_the_rule_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version = _version(tmp_path)
    record = _tuned_into(version, version / "tuning")
    _set_strategy(record, "pfor")
    record.write_text(record.read_text()[:40])
    _refused(version, caplog, "malformed")


def test_a_record_naming_an_unknown_strategy_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version = _version(tmp_path)
    _set_strategy(_tuned_into(version, version / "tuning"), "newton")
    _refused(version, caplog, "unknown strategy 'newton'")


def test_records_of_another_model_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version = _version(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    refs.tanh_mlp(10, outputs=2, seed=7).save(other / "model.keras")  # the same layers, other weights
    _set_strategy(_tuned_into(other, other / "tuning"), "pfor")
    (other / "tuning").rename(version / "tuning")
    _refused(version, caplog, "are for other models")


def test_a_record_copied_under_another_models_name_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    version = _version(tmp_path)
    record = _tuned_into(version, version / "tuning")
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "strategy": "pfor", "fingerprint": "0" * 64}))
    _refused(version, caplog, "written for another model")


@pytest.mark.parametrize("machine", ["x86_64 Another CPU tensorflow {tf}", "{arch} {cpu} tensorflow 2.0.0"])
def test_records_of_another_machine_kind_or_tensorflow_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, machine: str
) -> None:
    arch, rest = tuning_record.machine_kind().split(" ", 1)
    cpu, tf_version = rest.rsplit(" tensorflow ", 1)
    version = _version(tmp_path)
    record = _tuned_into(version, version / "tuning")
    data = json.loads(record.read_text())
    other = machine.format(tf=tf_version, arch=arch, cpu=cpu)
    record.write_text(json.dumps({**data, "strategy": "pfor", "machine": other}))
    _refused(version, caplog, f"written on {other!r}")
    caplog.clear()
    # The same record under the file name another machine kind would give it.
    record.rename(record.with_name("0" * 12 + record.name[12:]))
    _refused(version, caplog, "written on another machine kind")


def test_a_server_refuses_a_corrupt_record_in_the_repository_logs_it_and_serves_by_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version = _version(tmp_path)
    record = _tuned_into(version, version / "tuning")
    record.write_text("{not json")
    config = ServerConfig(
        model_repository=str(tmp_path / "repository"), listen="127.0.0.1:0", warmup_batch_sizes=(BATCH,),
        max_batch_size=BATCH, freeze_heap=False,
    )
    with caplog.at_level(logging.WARNING, logger="hessd_server.engine.tuning_record"):
        running = RunningServer(config)
        try:
            running.wait_until_serving()
            with hessd.Client(running.target) as client:
                blocks = client.hessian("mlp10", worker.case_input("mlp10", BATCH))
                metadata = client.metadata("mlp10")
        finally:
            running.stop()
    assert {t.source for t in metadata.strategy_timings} == {"rule"}
    assert any("refused" in r.getMessage() and str(record) in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(blocks, _pinned(metadata.strategy or ""))
