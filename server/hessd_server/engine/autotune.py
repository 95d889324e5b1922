"""Choosing a model's per-example Hessian strategy for one batch bucket.

The choice is made once per bucket, on its first batch (at warm-up, or its
first request), in one of four ways, recorded as each timing's ``source``:

* ``pinned``: ``EngineConfig.strategy`` names one;
* ``record``: the records shipped beside the model's files
  (``Model.tuning_records``, ``<version>/tuning/`` in a model repository), or
  else ``EngineConfig.tuning_cache``, hold a tuning record for the bucket
  (:mod:`.tuning_record`), written by an earlier process; its strategy is used
  without tuning. A record that is malformed or names another model, machine
  or strategy is refused with a log line, and the bucket chooses as if there
  were none;
* ``tuned``: ``tuning_cache`` is set and holds no record yet: every strategy
  that applies is compiled, checked against the reference, and the survivors
  timed a few calls each, taking turns; the fastest call wins (the minimum,
  since a shared machine's noise only ever adds time), and the choice is
  written as the bucket's record. When another process wrote one first, that
  record is adopted instead, so every process agrees;
* ``rule`` (the default): the strategy of :data:`strategies.RULE` when it
  applies and passes the gate, else the reference. No timing: the choice is a
  function of the model and the bucket, the same in every process.

The gate: the first autodiff strategy that runs is the reference; another is
used only if its values, gradient and blocks match the reference's within
rtol 1e-5 (plus 1e-5 of the largest entry, for entries near zero); a mismatch
is logged and the strategy dropped for that bucket. Every outcome and time is
recorded on the model (``metadata().strategy_timings``).

A small bucket (:data:`SMALL_BUCKET_ROWS`) without a record is not tuned: it
takes the strategy of the next larger bucket, checked on its own batch first.
That batch, padded to the larger bucket, runs through the larger bucket's
function (which passed the gate there), and the small bucket's result must
match those rows within the same tolerance; otherwise the mismatch is
recorded and the bucket is tuned. By rule or pinned, a small bucket only
takes the larger bucket's strategy when it is the one the rule or pin
prefers, which is what the bucket would choose alone; so what a process did
before never changes a bucket's strategy.

Only a deterministic failure (see :mod:`.compiled`) rules a strategy out. A
transient one (out of memory, a cancelled call) is raised from :func:`choose`
and records nothing, so the next call tunes the bucket afresh.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from hessd.results import StrategyTiming

from . import strategies, tuning_record
from .cancellation import check_cancelled
from .function_key import FunctionKey
from .model import Model
from .padding import pad_rows

_log = logging.getLogger(__name__)

RTOL = 1e-5
"""Agreement a strategy needs with the reference: |r - r_ref| <= RTOL * (|r_ref| + max |r_ref|)."""

SMALL_BUCKET_ROWS = 4096
"""A bucket of at most this many rows (B * D) takes the strategy chosen at the
next larger bucket of its precision, when there is one, instead of being
tuned itself: its calls take about a millisecond whichever strategy runs,
while tuning it compiles every strategy (seconds of a server's start). The
strategy is checked on the small bucket's batch against the larger bucket's
function, which needs no compile."""

TILED_ROWS_LIMIT = 1 << 16
"""Above this many rows (B * D) the tiled strategies are tried only when pfor failed."""

Compiled = Callable[..., tuple[tf.Tensor, ...]]
"""A strategy's compiled function for the bucket: (x, fixed, weights) -> (values, gradient, blocks)."""

FirstRun = Callable[[str], tuple[Compiled, tuple[tf.Tensor, ...]]]
"""Strategy name -> its compiled function and its result on the bucket's batch.
Raises :class:`StrategyFailed` when the strategy cannot run here; any other
exception is transient and passes through the tuner."""


class StrategyFailed(Exception):
    """A strategy cannot compute this model's blocks here (it cannot be traced,
    or XLA or graph mode refused it); the message says why."""


@dataclass(frozen=True)
class Choice:
    """The strategy kept for a bucket: its name, compiled function and result on the tuning batch."""

    name: str
    function: Compiled
    result: tuple[tf.Tensor, ...]


@dataclass
class _Candidate:
    name: str
    function: Compiled
    result: tuple[tf.Tensor, ...]
    arrays: tuple[np.ndarray, ...]


def choose(model: Model, key: FunctionKey, args: tuple[Any, ...], first_run: FirstRun) -> Choice:
    """Choose ``key``'s bucket's strategy (or rebuild its earlier choice) and return it.

    Raises:
        StrategyFailed: no strategy ran (the message has each one's reason).
        Anything ``first_run`` or a timed call raises that is not
        :class:`StrategyFailed` (out of memory, cancellation), unchanged.
    """
    with model.lock:
        known = model.strategy_choices.get((key.precision, key.batch))
    # The bucket's choice was made for some ``wrt``; the closed form may not apply to this one.
    if known is not None and strategies.refusal(known, model.call_for(key.precision), key.wrt) is None:
        function, result = first_run(known)
        return Choice(known, function, result)
    pinned = model.config.strategy is not None
    cache = None if pinned else model.config.tuning_cache
    record = _Record(key, "pinned" if pinned else "tuned" if cache else "rule")
    shipped = None if pinned else model.tuning_records
    for directory in (shipped, cache):
        recorded = None if directory is None else tuning_record.read(directory, model, key, shipped=directory is shipped)
        if recorded is not None:
            choice = _from_record(model, key, first_run, recorded, record)
            if choice is not None:
                return choice
    choice = _inherited_choice(model, key, args, first_run, record)
    if choice is None:
        choice = _tuned(model, key, args, first_run, record)
    if cache is not None:
        written = tuning_record.write(cache, model, key, choice.name, tuple(record.timings))
        if written.strategy != choice.name and not record.failed(written.strategy):
            _log.info("model %s: batch %d takes strategy %s from %s, written first", model.name, key.batch, written.strategy, written.path)
            return _from_record(model, key, first_run, written, _Record(key, "record")) or choice
    return choice


def _tuned(model: Model, key: FunctionKey, args: tuple[Any, ...], first_run: FirstRun, record: _Record) -> Choice:
    """Run the applicable strategies through the gate and keep the preferred
    (pinned or by rule) one, or the fastest when tuning."""
    candidates = _run_candidates(model, key, first_run, record)
    reference = next((c for name in strategies.REFERENCES for c in candidates if c.name == name), candidates[0])
    passed = [c for c in candidates if c is reference or _agrees(model, key, c, reference, record)]
    preferred = _preferred(model)
    if preferred is not None:
        chosen = next((c for c in passed if c.name == preferred), reference)
        seconds: dict[str, float | None] = {chosen.name: None}
    else:
        seconds = _time(passed, args, model.config.autotune_runs)
        chosen = min(passed, key=lambda c: seconds[c.name] or 0.0)
    for candidate in passed:
        record.note(candidate.name, "chosen" if candidate is chosen else "passed", seconds.get(candidate.name))
    _keep(model, key, chosen.name, tuple(record.timings))
    return Choice(chosen.name, chosen.function, chosen.result)


def _preferred(model: Model) -> str | None:
    """The strategy a bucket takes when it passes the gate: the pinned one, the
    rule's without a tuning cache, or None when the bucket is tuned by timing."""
    if model.config.strategy is not None:
        return model.config.strategy
    return None if model.config.tuning_cache else strategies.RULE


def _from_record(model: Model, key: FunctionKey, first_run: FirstRun, recorded: tuning_record.Recorded, record: _Record) -> Choice | None:
    """The bucket's run of the recorded strategy, with the record's timings; None
    (noted in ``record`` and logged) when it cannot run here."""
    try:
        function, result = first_run(recorded.strategy)
    except StrategyFailed as err:
        record.note(recorded.strategy, "failed", detail=f"as recorded in {recorded.path}: {err}"[:300])
        _log.warning(
            "model %s: strategy %s of %s fails at batch %d, choosing without the record: %s",
            model.name, recorded.strategy, recorded.path, key.batch, err,
        )
        return None
    timings = tuple(replace(t, source="record") for t in recorded.timings)
    _keep(model, key, recorded.strategy, timings)
    return Choice(recorded.strategy, function, result)


def _inherited_choice(
    model: Model, key: FunctionKey, args: tuple[Any, ...], first_run: FirstRun, record: _Record
) -> Choice | None:
    """The next larger bucket's strategy for a small bucket (see the module's
    docstring), or None when the bucket must be chosen on its own."""
    with model.lock:
        inherited = _inherited(model, key)
    if inherited is None:
        return None
    preferred = _preferred(model)
    if preferred is not None and inherited[0] != preferred:
        return None
    return _inherit(model, key, args, first_run, *inherited, record)


def _inherit(
    model: Model, key: FunctionKey, args: tuple[Any, ...], first_run: FirstRun, name: str, source: int, record: _Record
) -> Choice | None:
    """The bucket's run of ``name``, the strategy chosen at batch ``source``, when it
    matches ``source``'s function on the same rows; None (noted in ``record`` and
    logged) when it fails or differs, or ``source``'s function is no longer cached."""
    verified = model.functions.get(replace(key, batch=source))
    if verified is None:
        _log.info("model %s: batch %d's function was evicted; tuning batch %d", model.name, source, key.batch)
        return None
    try:
        function, result = first_run(name)
    except StrategyFailed as err:
        record.note(name, "failed", detail=f"as chosen at batch {source}: {err}"[:300])
        _log.info("model %s: strategy %s of batch %d fails at batch %d, tuning it: %s", model.name, name, source, key.batch, err)
        return None
    check_cancelled()
    expected = tuple(np.asarray(t)[: key.batch] for t in verified(*_padded(args, source)))
    mismatch = _difference(tuple(np.asarray(t) for t in result), expected, f"batch {source}'s")
    if mismatch is not None:
        detail = f"as chosen at batch {source}: {mismatch}"
        record.note(name, "rejected", detail=detail)
        _log.warning("model %s: strategy %s rejected at batch %d, tuning it: %s", model.name, name, key.batch, detail)
        return None
    detail = (
        f"as chosen at batch {source}; buckets of at most {SMALL_BUCKET_ROWS} rows (B * D) are not tuned, "
        f"and this one matches batch {source}'s results (rtol {RTOL:g})"
    )
    record.note(name, "chosen", detail=detail)
    _keep(model, key, name, tuple(record.timings[-1:]))
    return Choice(name, function, result)


def _padded(args: tuple[Any, ...], batch: int) -> tuple[Any, ...]:
    """(x, fixed inputs by name, weights) with ``batch`` rows, padded as the engine pads a bucket."""
    x, fixed, weights = args
    return (
        pad_rows(x, batch, edge=True),
        {n: pad_rows(a, batch, edge=True) for n, a in fixed.items()},
        pad_rows(weights, batch, edge=False),
    )


def _keep(model: Model, key: FunctionKey, name: str, timings: tuple[StrategyTiming, ...]) -> None:
    with model.lock:
        model.strategy_choices[key.precision, key.batch] = name
        model.strategy_timings[key.precision, key.batch] = timings
        model.strategy = name
    _log.info("model %s: per-example strategy %s for batch %d (%s)", model.name, name, key.batch, key.precision)


def _rows(key: FunctionKey) -> int:
    """B * D: the rows of the bucket's blocks."""
    return key.batch * int(np.prod(key.event_shape, dtype=np.int64))


def _inherited(model: Model, key: FunctionKey) -> tuple[str, int] | None:
    """(strategy, batch) of the next larger bucket of ``key``'s precision with a strategy,
    when ``key``'s bucket is small enough to take it (:data:`SMALL_BUCKET_ROWS`).
    Call with ``model.lock`` held."""
    if _rows(key) > SMALL_BUCKET_ROWS:
        return None
    larger = [batch for (precision, batch) in model.strategy_choices if precision == key.precision and batch > key.batch]
    if not larger:
        return None
    source = min(larger)
    return model.strategy_choices[key.precision, source], source


class _Record:
    """The outcomes of one bucket's tuning, in order."""

    def __init__(self, key: FunctionKey, source: str) -> None:
        self.key = key
        self.source = source
        self.timings: list[StrategyTiming] = []

    def note(self, name: str, outcome: str, seconds: float | None = None, detail: str = "") -> None:
        self.timings.append(StrategyTiming(self.key.batch, self.key.precision, name, outcome, seconds, detail, self.source))

    def failed(self, name: str) -> bool:
        """Whether ``name`` failed or was rejected or refused on this bucket."""
        return any(t.strategy == name and t.outcome in ("failed", "rejected", "refused") for t in self.timings)


def _names(model: Model) -> list[str]:
    """The strategies to try: all of them when tuning, or the references and the
    preferred one (of the references, only the first that runs is used)."""
    preferred = _preferred(model)
    if preferred is None:
        return list(strategies.STRATEGIES)
    return [*strategies.REFERENCES, *([] if preferred in strategies.REFERENCES else [preferred])]


def _skip_reason(model: Model, key: FunctionKey, name: str, candidates: list[_Candidate]) -> str | None:
    """Why ``name`` is not tried on this bucket, given the candidates that ran before it."""
    preferred = _preferred(model)
    ran = {c.name for c in candidates}
    if preferred is not None and name != preferred and ran & set(strategies.REFERENCES):
        why = "is forced" if model.config.strategy is not None else "is preferred by rule (no tuning cache)"
        return f"strategy {preferred!r} {why} and the reference has run"
    if name in strategies.TILED and name != preferred and "pfor" in ran:
        if not model.config.autotune_tiled:
            return "pfor works, and autotune_tiled is off"
        rows = _rows(key)
        if rows > TILED_ROWS_LIMIT:
            return f"pfor works, and {rows} tiled rows exceed {TILED_ROWS_LIMIT}"
    return None


def _run_candidates(model: Model, key: FunctionKey, first_run: FirstRun, record: _Record) -> list[_Candidate]:
    """Compile and run each applicable strategy once; the ones that ran (at least one)."""
    candidates: list[_Candidate] = []
    last_failure: BaseException | None = None
    for name in _names(model):
        if name not in strategies.STRATEGIES:
            record.note(name, "failed", detail=f"unknown strategy; known: {', '.join(strategies.STRATEGIES)}")
            _log.error("model %s: unknown per-example strategy %r", model.name, name)
            continue
        skipped = _skip_reason(model, key, name, candidates)
        if skipped:
            record.note(name, "skipped", detail=skipped)
            continue
        refused = strategies.refusal(name, model.call_for(key.precision), key.wrt)
        if refused:
            record.note(name, "refused", detail=refused)
            _log.info("model %s: strategy %s does not apply: %s", model.name, name, refused)
            continue
        try:
            function, result = first_run(name)
        except StrategyFailed as err:
            refused = _refused_while_tracing(err)
            record.note(name, "refused" if refused else "failed", detail=(refused or str(err))[:300])
            _log.info("model %s: strategy %s failed at batch %d: %s", model.name, name, key.batch, err, exc_info=err.__cause__)
            last_failure = err.__cause__ or err
            continue
        candidates.append(_Candidate(name, function, result, tuple(np.asarray(t) for t in result)))
    if not candidates:
        reasons = "; ".join(f"{t.strategy} {t.outcome}: {t.detail}" for t in record.timings)
        raise StrategyFailed(f"no per-example Hessian strategy ran ({reasons})") from last_failure
    return candidates


def _refused_while_tracing(err: BaseException) -> str | None:
    """The message of a :data:`strategies.Refusal` behind ``err`` (tracing may wrap it), or None."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, strategies.Refusal):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _agrees(model: Model, key: FunctionKey, candidate: _Candidate, reference: _Candidate, record: _Record) -> bool:
    """Whether ``candidate`` matches ``reference`` (values, gradient, blocks); a mismatch is noted and logged."""
    detail = _difference(candidate.arrays, reference.arrays, f"{reference.name}'s")
    if detail is None:
        return True
    record.note(candidate.name, "rejected", detail=detail)
    _log.warning("model %s: strategy %s rejected at batch %d: %s", model.name, candidate.name, key.batch, detail)
    return False


def _difference(got: tuple[np.ndarray, ...], expected: tuple[np.ndarray, ...], whose: str) -> str | None:
    """How (values, gradient, blocks) ``got`` differ from ``expected`` beyond
    :data:`RTOL`, or None where they agree; ``whose`` names the expected ones."""
    for what, value, reference in zip(("values", "gradient", "blocks"), got, expected):
        if value.shape != reference.shape:
            return f"{what} have shape {value.shape}, {whose} {reference.shape}"
        error = np.abs(value.astype(np.float64) - reference)
        allowed = RTOL * (np.abs(reference) + np.max(np.abs(reference), initial=0.0))
        bad = ~(error <= allowed) & np.isfinite(reference)
        if np.any(bad):
            return f"{what} differ from {whose} by up to {float(np.max(error[bad])):.3g} (rtol {RTOL:g})"
    return None


def _time(candidates: list[_Candidate], args: tuple[Any, ...], runs: int) -> dict[str, float | None]:
    """Seconds of each candidate's fastest call, the candidates taking turns;
    a lone candidate is not timed (None). Checks for cancellation before each call."""
    if len(candidates) == 1:
        return {candidates[0].name: None}
    times: dict[str, list[float]] = {c.name: [] for c in candidates}
    for _ in range(runs):
        for candidate in candidates:
            check_cancelled()
            start = time.perf_counter()
            for tensor in candidate.function(*args):
                tensor.numpy()
            times[candidate.name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}
