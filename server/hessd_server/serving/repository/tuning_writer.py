"""``hessd-server --write-tuning-records``: tune every served version of a model
repository and write its tuning records beside it, in ``<version>/tuning/``.

A serving process never writes into the repository (it may be read-only, and
shared by replicas that must agree); this one-off command is how a version
gets its records. It loads each version as the server would (the model's
config.toml and the server's flags), and warms it with a tuning cache pointing
at the version's ``tuning`` folder, so each warmed bucket is tuned by timing
and its choice written there (:mod:`hessd_server.engine.tuning_record`).
Records already there are kept: a bucket with one is read, not tuned again;
delete the folder to tune afresh. A server that polls the repository sees the
new files and reloads the version, which then takes the records.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ...engine import load_model
from ...engine.tuning_record import BESIDE_MODEL
from ...engine.warmup import warmup
from ..server_config import ServerConfig
from .model_repository import ModelFolder, VersionFolder, scan

_log = logging.getLogger(__name__)


def write_tuning_records(config: ServerConfig) -> int:
    """Tune and record every version of ``config.model_repository`` that its
    model's version policy serves; the exit status: 0 when every such version
    has its records, 1 otherwise (each failure is logged)."""
    if config.model_repository is None:
        _log.error("--write-tuning-records needs --model-repository DIR")
        return 1
    try:
        folders = scan(Path(config.model_repository))
    except OSError as error:
        _log.error("cannot read the model repository %s: %s", config.model_repository, error)
        return 1
    failures = 0
    for folder in folders.values():
        if folder.error is not None:
            _log.error("model %s: %s; no records written", folder.name, folder.error)
            failures += 1
            continue
        usable = {n for n, v in folder.versions.items() if v.error is None}
        for number in sorted(folder.config.version_policy.select(usable)):
            failures += not _write_version(config, folder, folder.versions[number])
    return 1 if failures else 0


def _write_version(config: ServerConfig, folder: ModelFolder, version: VersionFolder) -> bool:
    """Tune and record one version; whether its records are in place."""
    assert version.source is not None
    records = (version.source if version.source.is_dir() else version.source.parent) / BESIDE_MODEL
    engine = folder.config.engine_config(config.engine_config())
    if engine.strategy is not None:
        _log.warning(
            "model %s: version %d pins strategy %s (--strategy or config.toml), so nothing is tuned; "
            "no records written",
            folder.name, version.version, engine.strategy,
        )
        return True
    try:
        model = load_model(
            str(version.source),
            name=folder.name,
            config=dataclasses.replace(engine, tuning_cache=str(records)),
            safe_mode=config.safe_mode,
        )
        sizes, methods, precisions = folder.config.warmup_plan(
            config.warmup_batch_sizes, config.warmup_methods, config.warmup_precisions
        )
        warmup(model, sizes, methods=methods, precisions=precisions)
    except Exception as error:
        _log.error("model %s: version %d could not be tuned: %s", folder.name, version.version, error)
        return False
    for timing in model.metadata().strategy_timings:
        if timing.outcome == "chosen":
            _log.info(
                "model %s: version %d, batch %d (%s): strategy %s (%s) in %s",
                folder.name, version.version, timing.batch, timing.precision, timing.strategy, timing.source, records,
            )
    return True
