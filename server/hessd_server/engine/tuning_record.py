"""Tuning records: each bucket's chosen per-example Hessian strategy, written
once to a shared directory and read by every later process.

A record is one JSON file per (model, machine kind, bucket):
``DIR/<model fingerprint>/<machine>-<precision>-b<batch>-<shapes>.json``
(the model's name is in the file, not the path: a Keras model's default name
depends on how many models a process built before).
The model's fingerprint covers its architecture and weights, the machine's
covers the CPU model, the architecture and the TensorFlow version, so a record
is only read where the same strategy computes the same bits. The first process
to write a bucket's record wins (the file is linked into place, never
overwritten); a process that finds one already there adopts it. See
``docs/design/kernel.md`` (reproducible results).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from hessd.results import StrategyTiming

from .function_key import FunctionKey
from .model import Model

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """A bucket's record: the strategy to use and the outcomes of the tuning that chose it."""

    strategy: str
    timings: tuple[StrategyTiming, ...]
    path: Path


@functools.cache
def machine_kind() -> str:
    """CPU model, architecture and TensorFlow version: what must match for a record's strategy to give the same bits."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.machine()} {cpu} tensorflow {tf.__version__}"


def path_for(directory: str, model: Model, key: FunctionKey) -> Path:
    """Where ``key``'s bucket's record of ``model`` lives under ``directory``."""
    machine = hashlib.sha256(machine_kind().encode()).hexdigest()[:12]
    shapes = hashlib.sha256(repr((key.wrt, key.inputs, key.outputs)).encode()).hexdigest()[:12]
    return Path(directory) / model.fingerprint()[:24] / f"{machine}-{key.precision}-b{key.batch}-{shapes}.json"


def read(directory: str, model: Model, key: FunctionKey) -> Recorded | None:
    """The record of ``key``'s bucket, or None when there is none (or it cannot be read, which is logged)."""
    path = path_for(directory, model, key)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        _log.warning("model %s: tuning record %s cannot be read: %s", model.name, path, err)
        return None
    try:
        data = json.loads(text)
        timings = tuple(StrategyTiming(**t) for t in data["timings"])
        return Recorded(str(data["strategy"]), timings, path)
    except (ValueError, KeyError, TypeError) as err:
        _log.warning("model %s: tuning record %s is malformed, ignored: %s", model.name, path, err)
        return None


def write(directory: str, model: Model, key: FunctionKey, strategy: str, timings: tuple[StrategyTiming, ...]) -> Recorded:
    """Record ``strategy`` for ``key``'s bucket unless a record is there already;
    the record in effect afterwards (this one, or the earlier one that won).
    A directory that cannot be written is logged and the choice kept unrecorded."""
    path = path_for(directory, model, key)
    ours = Recorded(strategy, timings, path)
    text = json.dumps(
        {
            "model": model.name,
            "machine": machine_kind(),
            "strategy": strategy,
            "timings": [dataclasses.asdict(t) for t in timings],
        },
        indent=1,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
            tmp.write(text)
        try:
            os.link(tmp.name, path)
        finally:
            os.unlink(tmp.name)
    except FileExistsError:
        return read(directory, model, key) or ours
    except OSError as err:
        _log.warning("model %s: tuning record %s cannot be written: %s", model.name, path, err)
    return ours
