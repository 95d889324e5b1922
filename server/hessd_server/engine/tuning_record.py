"""Tuning records: each bucket's chosen per-example Hessian strategy, written
once to a directory and read by every later process.

A record is one JSON file per (model, machine kind, bucket):
``DIR/<model fingerprint>/<machine>-<precision>-b<batch>-<shapes>.json``
(the model's name is in the file, not the path: a Keras model's default name
depends on how many models a process built before).
The model's fingerprint covers its architecture and weights, the machine's
covers the CPU model, the architecture and the TensorFlow version, so a record
is only read where the same strategy computes the same bits; the file repeats
both, and a file whose contents name another model or machine is refused. The
first process to write a bucket's record wins (the file is linked into place,
never overwritten); a process that finds one already there adopts it.

``DIR`` is a shared ``tuning_cache``, or the folder :data:`BESIDE_MODEL` next to
a model's files (:func:`beside`), which ships with a model version and is only
written by ``hessd-server --write-tuning-records``. See
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
from .strategies import STRATEGIES

_log = logging.getLogger(__name__)

BESIDE_MODEL = "tuning"
"""The folder of tuning records beside a model's files: ``<version>/tuning/`` in a
model repository, next to ``model.keras`` or inside a SavedModel folder."""

MAX_RECORD_BYTES = 1 << 20
"""A record file larger than this is refused unread."""


class RecordRefused(Exception):
    """A record file exists but cannot be used here; the message says why."""


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


def beside(source: str) -> Path | None:
    """The folder of tuning records shipped with the model loaded from ``source``: beside
    a ``.keras`` file, inside a SavedModel folder; None for a source that is no path."""
    path = Path(source)
    if path.is_dir():
        return path / BESIDE_MODEL
    if path.is_file():
        return path.parent / BESIDE_MODEL
    return None


def path_for(directory: str | Path, model: Model, key: FunctionKey) -> Path:
    """Where ``key``'s bucket's record of ``model`` lives under ``directory``."""
    machine = hashlib.sha256(machine_kind().encode()).hexdigest()[:12]
    shapes = hashlib.sha256(repr((key.wrt, key.inputs, key.outputs)).encode()).hexdigest()[:12]
    return Path(directory) / model.fingerprint()[:24] / f"{machine}-{key.precision}-b{key.batch}-{shapes}.json"


def read(directory: str | Path, model: Model, key: FunctionKey, *, shipped: bool = False) -> Recorded | None:
    """The record of ``key``'s bucket, or None when there is none or it is refused
    (unreadable, malformed, or naming another model, machine or strategy), which is
    logged. ``shipped``: ``directory`` holds the records shipped with this model
    (:func:`beside`), so records of other models or machines there are a mistake,
    logged too."""
    path = path_for(directory, model, key)
    try:
        return _parsed(path, model)
    except FileNotFoundError:
        if shipped:
            _explain_absence(Path(directory), model, key)
        return None
    except (OSError, RecordRefused) as err:
        _log.warning("model %s: tuning record %s refused, the bucket chooses without it: %s", model.name, path, err)
        return None


def _parsed(path: Path, model: Model) -> Recorded:
    """The record in ``path``, checked against ``model`` and this machine.

    Raises:
        FileNotFoundError: there is no such file.
        OSError: it cannot be read.
        RecordRefused: it is too large, malformed, or for another model, machine or strategy.
    """
    with path.open("rb") as file:
        raw = file.read(MAX_RECORD_BYTES + 1)
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordRefused(f"larger than {MAX_RECORD_BYTES} bytes")
    try:
        data = json.loads(raw)
        machine, fingerprint, strategy = str(data["machine"]), str(data["fingerprint"]), str(data["strategy"])
        timings = tuple(StrategyTiming(**t) for t in data["timings"])
    except (ValueError, KeyError, TypeError) as err:
        raise RecordRefused(f"malformed ({type(err).__name__}: {err})") from err
    if fingerprint != model.fingerprint():
        raise RecordRefused(f"written for another model (fingerprint {fingerprint[:12]}, this one {model.fingerprint()[:12]})")
    if machine != machine_kind():
        raise RecordRefused(f"written on {machine!r}, this is {machine_kind()!r}")
    if strategy not in STRATEGIES:
        raise RecordRefused(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return Recorded(strategy, timings, path)


def _explain_absence(directory: Path, model: Model, key: FunctionKey) -> None:
    """Log why ``directory``, the model's shipped records, holds none for ``key``'s bucket."""
    if not directory.is_dir():
        return
    ours = path_for(directory, model, key)
    if not ours.parent.is_dir():
        others = sorted(p.name[:12] for p in directory.iterdir() if p.is_dir())
        _log.warning(
            "model %s: the tuning records in %s are for other models (fingerprints %s; this one %s), "
            "refused: batch %d chooses without them",
            model.name, directory, ", ".join(others) or "none", model.fingerprint()[:12], key.batch,
        )
        return
    machine = ours.name.split("-", 1)[0]
    elsewhere = sorted(p for p in ours.parent.glob("*.json") if not p.name.startswith(machine))
    if elsewhere and not any(ours.parent.glob(f"{machine}-*.json")):
        try:
            written_on = json.loads(elsewhere[0].read_bytes()[:MAX_RECORD_BYTES]).get("machine", "?")
        except (OSError, ValueError, AttributeError):
            written_on = "?"
        _log.warning(
            "model %s: the tuning records in %s were written on another machine kind (%r; this is %r), "
            "refused: batch %d chooses without them",
            model.name, ours.parent, written_on, machine_kind(), key.batch,
        )
        return
    _log.info("model %s: %s holds no tuning record for batch %d (%s)", model.name, ours.parent, key.batch, key.precision)


def write(directory: str | Path, model: Model, key: FunctionKey, strategy: str, timings: tuple[StrategyTiming, ...]) -> Recorded:
    """Record ``strategy`` for ``key``'s bucket unless a record is there already;
    the record in effect afterwards (this one, or the earlier one that won).
    A directory that cannot be written is logged and the choice kept unrecorded."""
    path = path_for(directory, model, key)
    ours = Recorded(strategy, timings, path)
    text = json.dumps(
        {
            "model": model.name,
            "fingerprint": model.fingerprint(),
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
