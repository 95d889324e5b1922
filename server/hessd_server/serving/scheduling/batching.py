"""The dynamic batcher: concurrent requests for one model and one batch key
become one engine call, and every engine call waits in one bounded queue.

Lone calls (``max_inline``, off unless set). A request that finds the server
idle (no engine work running or queued, and no other call in flight for
:data:`LONE_WINDOW_S`) and whose kind of call last ran alone in less than
``max_inline`` runs on the event loop itself, saving the two hand-offs to an
engine thread and back. Before it does, it lets the event loop take a few
turns, so that a call which arrived meanwhile is seen first and both go to the
engine threads. While the event loop computes, though, it accepts no new call,
so callers that keep several calls outstanding can be served one after another
on the loop, each seeing the server idle, instead of batching: hence off by
default, for servers with one caller at a time. A call whose compiled function
is missing (evicted) is never built on the event loop: it goes to an engine
thread.

Scheduling. Up to ``engine_threads`` batches run at once, and at most
``max_batches_in_flight`` of them for one model and
:func:`~hessd_server.engine.stacking.stack_key` (a *key*). A request that
arrives while an engine thread is free and its key has a batch to spare starts
at once, alone: a lone caller never waits. Otherwise it queues: while its
key's batch runs, the requests of that key collect, and when it finishes (or a
thread frees) the oldest queued request that may start does, together with
every queued request of its key that fits (FIFO, up to the batch limit, and
never more examples than the model's ``max_result_bytes`` holds results for:
the rest run in a later batch). Holding a key to one batch in flight makes
concurrent callers share engine calls instead of spreading small batches over
the threads, which on few cores also leaves CPU to the event loop. A request
that has queued for ``max_queue_delay`` starts its batch on a free thread, or
else on a spare one beside the running ones (at most ``engine_threads``
spare), so a long computation cannot hold small calls back for longer than that.

What runs alone: ``full=True``, models whose examples are not independent,
requests of at least the batch limit (the largest warmed bucket), and
requests of a model the engine has not probed yet (they are checked on the
engine thread). Everything else is checked on the event loop before it
queues, so a bad request fails alone and never fails the others in its
batch; if a batched engine call still fails, its requests are run again one
by one, each getting its own result or error.

Admission. At most ``max_queued_requests`` requests wait; past that a new
request fails at once with ``UnavailableError`` (UNAVAILABLE). A queued
request whose RPC is cancelled or whose deadline passes leaves the queue
before its batch runs, and is counted in ``hessd_dropped_engine_calls_total``
(``reason="deadline"`` when it ended at most
:data:`~.engine_executor.DEADLINE_SLACK_S` before its deadline, else
``"cancelled"``; :func:`~.engine_executor.end_reason`, the rule running calls
are counted by too). Deadlines and queue times are measured on the batcher's
clock.

Every batch that starts is recorded (:attr:`Batcher.records`, and the
``hessd_batches_total{reason}`` counter) with why it started: ``inline`` (a
lone call run on the event loop), ``idle`` (a thread was free on arrival),
``engine_free`` (a thread freed), ``full`` (a thread freed and the batch
reached the limit) or ``delay``. Every engine call's time on its thread goes
to ``hessd_engine_call_duration_seconds``.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from hessd.errors import DeadlineExceededError, UnavailableError

from ...engine import Model
from ...engine.compiled import NotCompiled, compiled_only
from ...engine.execution import PreparedCall
from ...engine.stacking import can_stack, run_stacked, stack_key, stack_limit
from ..observability import tracing
from ..observability.metrics import Metrics
from .engine_executor import Deadline, EngineExecutor, end_reason

_log = logging.getLogger(__name__)

T = TypeVar("T")

RECORDS_KEPT = 1000
"""How many of the latest batches :attr:`Batcher.records` keeps."""

INLINE_PROBE_TURNS = 4
"""Turns of the event loop a lone call lets pass before it runs on the loop, so
that calls which have arrived meanwhile are seen in flight first."""

LONE_WINDOW_S = 0.1
"""A call runs on the event loop only if no two calls have been in flight for this long."""

LONE_TIMINGS_KEPT = 1024
"""Kinds of call per model whose last lone time is kept; past this they are forgotten
(and measured again, on an engine thread)."""

LOOP_CHECK_BYTES = 1 << 20
"""Requests with more input bytes than this are checked on an engine thread,
not on the event loop, and run alone."""


class BatchRecord(NamedTuple):
    """One batch that started.

    Attributes:
        reason: why it started then: "inline", "idle", "engine_free", "full" or "delay".
        methods: the RPC method of each request in it, in batch order.
        examples: the examples of all its requests together.
    """

    reason: str
    methods: tuple[str, ...]
    examples: int


@dataclass(frozen=True)
class BatchingSettings:
    """How the batcher groups and admits requests.

    Attributes:
        enabled: group concurrent requests into one engine call; when False
            every request runs alone (the queue bound still holds).
        engine_threads: batches that run at once.
        max_batches_in_flight: batches of one model and batch key that run at once
            (before ``max_queue_delay``); further requests of that key queue.
        batch_limit: most examples per batch; requests of this size or more run alone.
        max_queue_delay_s: after this long queued, a request's batch starts on a spare thread.
        max_queued_requests: requests that may wait; more fail UNAVAILABLE.
        max_inline_s: a lone call whose kind last ran alone in less than this runs
            on the event loop; 0 runs every call on an engine thread.
    """

    enabled: bool
    engine_threads: int
    batch_limit: int
    max_queue_delay_s: float
    max_queued_requests: int
    max_batches_in_flight: int = 1
    max_inline_s: float = 0.0


@dataclass(eq=False)
class _Request:
    """One queued request."""

    method: str
    group: Hashable | None
    examples: int
    work: Callable[[], Any] | tuple[Model, PreparedCall]
    deadline: float | None
    queued_at: float
    trace: tracing.RequestTrace | None = None
    outcome: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class _Slot:
    """An engine thread taken for one batch, and the key that batch counts against;
    handed as its outcome to a queued request that is to run alone on it.

    Attributes:
        spare: the thread is a spare one.
        group: the batch key (model and stack key); None for work that runs alone.
    """

    spare: bool
    group: Hashable | None


class Batcher:
    """Groups, queues and runs engine work for the servicer; use from the event loop only.

    Args:
        executor: runs engine work on the engine threads.
        metrics: where batches, queue times, queue length, drops and refusals go.
        settings: grouping and admission limits.
        clock: the monotonic clock, in seconds, that deadlines and queue times are
            measured on (``time.monotonic``); tests pass their own to expire
            deadlines without waiting.
        alone_for: whether the server has had at most one call in flight for the
            given seconds (:meth:`Admission.alone_for`); without it, no call runs
            on the event loop.
    """

    def __init__(
        self,
        executor: EngineExecutor,
        metrics: Metrics,
        settings: BatchingSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        alone_for: Callable[[float], bool] | None = None,
    ) -> None:
        self._executor = executor
        self.clock = clock
        self._alone_for = alone_for
        self._lone_seconds: weakref.WeakKeyDictionary[Model, dict[tuple[Hashable, int], float]] = (
            weakref.WeakKeyDictionary()
        )
        """Per model, by (batch key, batch size): seconds its last lone engine call took."""
        self._metrics = metrics
        self.settings = settings
        self._queue: collections.deque[_Request] = collections.deque()
        self._running = 0
        self._spare_running = 0
        self._in_flight: collections.Counter[Hashable] = collections.Counter()
        self._delay_timer: asyncio.TimerHandle | None = None
        self._delay_due = 0.0
        """The batcher-clock moment ``_delay_timer`` is set for."""
        self.records: collections.deque[BatchRecord] = collections.deque(maxlen=RECORDS_KEPT)

    @property
    def queued(self) -> int:
        """Requests waiting for an engine thread."""
        return len(self._queue)

    async def compute(
        self,
        context: Deadline | None,
        method: str,
        model: Model,
        prepare: Callable[[], PreparedCall],
        examples: int,
        input_bytes: int,
    ) -> Any:
        """The engine's result for one derivative request (an ``Evaluation`` for
        the second-order kinds, else an array), batched with others where it can be.

        Args:
            context: the RPC, for its deadline; None for work without one.
            method: the RPC method name, for the records.
            model: the model to run on.
            prepare: checks the request (raises a ``hessd.errors`` type) and
                returns it ready to run.
            examples: the request's batch size B.
            input_bytes: the request's input bytes.

        Raises:
            UnavailableError: the queue is full.
            DeadlineExceededError, CancelledError: the RPC ended while queued.
            HessdError: the request is bad, or its computation failed.
        """
        if self._checkable_on_loop(model, examples, input_bytes):
            call = prepare()
            group = (id(model), stack_key(call)) if self._stackable(model, call) else None
            return await self._submit(context, method, group, call.batch, (model, call))
        return await self._submit(context, method, None, examples, lambda: run_stacked(model, [prepare()])[0])

    async def call(self, context: Deadline | None, method: str, function: Callable[[], T]) -> T:
        """``function()`` alone on an engine thread, queued and admitted like any request."""
        return await self._submit(context, method, None, 1, function)

    def _checkable_on_loop(self, model: Model, examples: int, input_bytes: int) -> bool:
        probed = model.batch_independent is not None
        known_outputs = all(None not in output.shape for output in model.outputs)
        return probed and known_outputs and input_bytes <= LOOP_CHECK_BYTES and examples < self.settings.batch_limit

    def _stackable(self, model: Model, call: PreparedCall) -> bool:
        return self.settings.enabled and can_stack(model, call) and call.batch < self._limit(model, call)

    def _limit(self, model: Model, call: PreparedCall) -> int:
        """The most examples a batch of ``call``'s group may hold."""
        return min(self.settings.batch_limit, stack_limit(model, call))

    async def _submit(
        self,
        context: Deadline | None,
        method: str,
        group: Hashable | None,
        examples: int,
        work: Callable[[], Any] | tuple[Model, PreparedCall],
    ) -> Any:
        if isinstance(work, tuple) and group is not None and self._may_run_inline(group, *work):
            ran, result = await self._run_inline(context, method, group, *work)
            if ran:
                return result
        if self._running < self.settings.engine_threads and self._may_start(group):
            slot = self._take_slot(spare=False, group=group)
            self._record("idle", (method,), examples)
            tracing.batch_started([tracing.current_trace()], "idle", examples, group)
            self._metrics.observe_queue_time(0.0)
            return await self._run_alone(context, work, slot)
        if len(self._queue) >= self.settings.max_queued_requests:
            self._metrics.count_rejected()
            raise UnavailableError(
                f"the server is overloaded: {len(self._queue)} requests are already queued "
                f"(--max-queued-requests); retry with exponential backoff",
                reason="SERVER_OVERLOADED",
                metadata={"queued_requests": len(self._queue)},
            )
        remaining = None if context is None else context.time_remaining()
        now = self.clock()
        deadline = None if remaining is None else now + remaining
        request = _Request(method, group, examples, work, deadline, queued_at=now, trace=tracing.queued())
        self._queue.append(request)
        self._metrics.set_queued(len(self._queue))
        if self._delay_timer is None:
            self._arm_delay_timer()
        try:
            outcome = await asyncio.shield(request.outcome)
        except asyncio.CancelledError:
            self._give_up(request)
            raise
        if isinstance(outcome, _Slot):
            return await self._run_alone(context, work, outcome)
        return outcome

    def _idle(self) -> bool:
        """Whether no engine work runs or waits."""
        return self._running == 0 and self._spare_running == 0 and not self._queue

    def _inlining(self) -> bool:
        """Whether lone calls may run on the event loop at all."""
        return self._alone_for is not None and self.settings.max_inline_s > 0

    def _alone_and_idle(self) -> bool:
        """Whether the server has been alone with one call for :data:`LONE_WINDOW_S` and no
        engine work runs or waits."""
        return self._alone_for is not None and self._alone_for(LONE_WINDOW_S) and self._idle()

    def _may_run_inline(self, group: Hashable, model: Model, call: PreparedCall) -> bool:
        """Whether ``call`` (of batch key ``group``) may run on the event loop, as far as
        can be told before the loop takes its turns: the server is alone with it, the
        batcher is idle, and a lone call of its kind last took less than ``max_inline_s``."""
        if not self._inlining() or not self._alone_and_idle():
            return False
        took = self._lone_seconds.get(model, {}).get((group, call.batch))
        return took is not None and took < self.settings.max_inline_s

    async def _run_inline(
        self,
        context: Deadline | None,
        method: str,
        group: Hashable,
        model: Model,
        call: PreparedCall,
    ) -> tuple[bool, Any]:
        """Run ``call`` on the event loop if, after :data:`INLINE_PROBE_TURNS` turns of
        the loop, the server is still alone with it, nothing else runs, its
        deadline has not passed and its function is compiled; return whether it
        ran, and its result."""
        for _ in range(INLINE_PROBE_TURNS):
            await asyncio.sleep(0)
        if not self._alone_and_idle():
            return False, None
        remaining = None if context is None else context.time_remaining()
        if remaining is not None and remaining <= 0:
            return False, None
        trace = tracing.current_trace()
        tracing.batch_started([trace], "inline", call.batch, group)
        started = time.perf_counter()
        try:
            with compiled_only():
                result = tracing.engine_call(lambda: run_stacked(model, [call])[0], [trace])()
        except NotCompiled:
            return False, None
        except Exception:
            self._metrics.observe_engine_call(time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started
        self._metrics.observe_engine_call(seconds)
        self._note_lone_call(group, model, call, seconds)
        self._record("inline", (method,), call.batch)
        self._metrics.observe_queue_time(0.0)
        return True, result

    def _note_lone_call(self, group: Hashable, model: Model, call: PreparedCall, seconds: float) -> None:
        """Remember that ``call`` (of batch key ``group``) alone took ``seconds`` on the engine."""
        timings = self._lone_seconds.setdefault(model, {})
        if len(timings) >= LONE_TIMINGS_KEPT:
            timings.clear()
        timings[(group, call.batch)] = seconds

    def _give_up(self, request: _Request) -> None:
        """The RPC of ``request`` ended: leave the queue, or hand back a thread it was given."""
        if request in self._queue:
            self._queue.remove(request)
            self._metrics.set_queued(len(self._queue))
            self._metrics.count_dropped(end_reason(request.deadline, self.clock()))
            request.outcome.cancel()
        elif request.outcome.done() and not request.outcome.cancelled() and request.outcome.exception() is None:
            outcome = request.outcome.result()
            if isinstance(outcome, _Slot):
                self._release(outcome)

    async def _run_alone(
        self,
        context: Deadline | None,
        work: Callable[[], Any] | tuple[Model, PreparedCall],
        slot: _Slot,
    ) -> Any:
        """Run one request's work on the engine thread it holds, then release the thread."""
        took: list[float] = []
        if isinstance(work, tuple):
            model, call = work
            function = self._timed(lambda: run_stacked(model, [call])[0], took)
        else:
            function = self._timed(work)
        # The request's context goes with its work, so that log lines there name the call.
        function = functools.partial(contextvars.copy_context().run, tracing.engine_call(function, [tracing.current_trace()]))
        try:
            if context is None:
                result = await self._executor.run_started(function)
            else:
                result = await self._executor.run(context, function)
        finally:
            self._release(slot)
        if isinstance(work, tuple) and slot.group is not None and self._inlining():
            self._note_lone_call(slot.group, *work, took[0])
        return result

    def _timed(self, function: Callable[[], T], took: list[float] | None = None) -> Callable[[], T]:
        """``function``, its run on the engine thread observed as one engine call
        and its seconds appended to ``took``."""

        def timed() -> T:
            started = time.perf_counter()
            try:
                return function()
            finally:
                seconds = time.perf_counter() - started
                self._metrics.observe_engine_call(seconds)
                if took is not None:
                    took.append(seconds)

        return timed

    def _may_start(self, group: Hashable | None) -> bool:
        """Whether a batch of ``group`` may start now on a free thread (not only after the delay)."""
        return group is None or self._in_flight[group] < self.settings.max_batches_in_flight

    def _take_slot(self, *, spare: bool, group: Hashable | None) -> _Slot:
        if spare:
            self._spare_running += 1
        else:
            self._running += 1
        if group is not None:
            self._in_flight[group] += 1
        return _Slot(spare, group)

    def _release(self, slot: _Slot) -> None:
        if slot.spare:
            self._spare_running -= 1
        else:
            self._running -= 1
        if slot.group is not None:
            self._in_flight[slot.group] -= 1
            if not self._in_flight[slot.group]:
                del self._in_flight[slot.group]
        self._dispatch()

    def _dispatch(self) -> None:
        """Start queued batches that may start while engine threads are free."""
        while self._running < self.settings.engine_threads:
            batch = self._take_batch(self._may_start)
            if not batch:
                break
            self._start(batch, spare=False, reason="engine_free")
        self._metrics.set_queued(len(self._queue))
        self._arm_delay_timer()

    def _start(self, batch: list[_Request], *, spare: bool, reason: str) -> None:
        """Start ``batch`` (taken off the queue) on a free or spare thread."""
        head = batch[0]
        slot = self._take_slot(spare=spare, group=head.group)
        examples = sum(r.examples for r in batch)
        if reason == "engine_free" and head.group is not None and examples >= self._limit(*head.work):
            reason = "full"
        self._record(reason, tuple(r.method for r in batch), examples)
        tracing.batch_started([r.trace for r in batch], reason, examples, head.group)
        now = self.clock()
        for request in batch:
            self._metrics.observe_queue_time(now - request.queued_at)
        if len(batch) == 1:
            head.outcome.set_result(slot)
            return
        asyncio.ensure_future(self._run_batch(batch, slot))

    def _take_batch(self, startable: Callable[[Hashable | None], bool]) -> list[_Request]:
        """Remove and return the oldest live queued request whose key is ``startable``,
        and the queued requests that can join it; expired requests met on the way
        are dropped."""
        now = self.clock()
        for head in list(self._queue):
            if head.deadline is not None and now >= head.deadline:
                self._queue.remove(head)
                self._metrics.count_dropped("deadline")
                head.outcome.set_exception(
                    DeadlineExceededError("the call's deadline passed while it was queued")
                )
                continue
            if not startable(head.group):
                continue
            self._queue.remove(head)
            if head.group is None:
                return [head]
            batch, room = [head], self._limit(*head.work) - head.examples
            for request in list(self._queue):
                if room <= 0:
                    break
                if request.group == head.group and request.examples <= room:
                    if request.deadline is not None and now >= request.deadline:
                        continue
                    self._queue.remove(request)
                    batch.append(request)
                    room -= request.examples
            return batch
        return []

    async def _run_batch(self, batch: list[_Request], slot: _Slot) -> None:
        """Run ``batch`` as one engine call on a taken thread and settle each request."""
        model = batch[0].work[0]
        calls = [request.work[1] for request in batch]
        try:
            run = tracing.engine_call(lambda: _run_or_retry(model, calls), [r.trace for r in batch])
            outcomes = await self._executor.run_started(self._timed(run))
        except Exception as error:  # the pool refused the work (shutting down)
            outcomes = [error] * len(batch)
        finally:
            self._release(slot)
        for request, outcome in zip(batch, outcomes):
            if request.outcome.done():
                continue
            if isinstance(outcome, BaseException):
                request.outcome.set_exception(outcome)
            else:
                request.outcome.set_result(outcome)

    def _arm_delay_timer(self) -> None:
        """Wake up when the oldest queued request has waited ``max_queue_delay``; a timer
        already set for that moment is kept (a request joining a queue that has one
        changes nothing), so that queueing costs no timer."""
        threads = self.settings.engine_threads
        if not self._queue or (self._spare_running >= threads and self._running >= threads):
            self._cancel_delay_timer()
            return
        due = self._queue[0].queued_at + self.settings.max_queue_delay_s
        if self._delay_timer is not None and self._delay_due == due:
            return
        self._cancel_delay_timer()
        self._delay_due = due
        self._delay_timer = asyncio.get_running_loop().call_later(max(due - self.clock(), 0.0), self._on_delay)

    def _cancel_delay_timer(self) -> None:
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None

    def _on_delay(self) -> None:
        self._delay_timer = None
        now = self.clock()
        threads = self.settings.engine_threads
        while self._queue and now - self._queue[0].queued_at >= self.settings.max_queue_delay_s:
            spare = self._running >= threads
            if spare and self._spare_running >= threads:
                break
            batch = self._take_batch(lambda group: True)
            if batch:
                self._start(batch, spare=spare, reason="delay")
        self._metrics.set_queued(len(self._queue))
        self._arm_delay_timer()

    def _record(self, reason: str, methods: tuple[str, ...], examples: int) -> None:
        self.records.append(BatchRecord(reason, methods, examples))
        self._metrics.observe_batch(reason, examples)


def _run_or_retry(model: Model, calls: list[PreparedCall]) -> list[Any]:
    """Each call's result or exception: all in one engine call, or one by one if that fails."""
    try:
        return list(run_stacked(model, calls))
    except Exception as error:
        _log.info("a batch of %d requests failed (%s); running them one by one", len(calls), error)
    outcomes: list[Any] = []
    for call in calls:
        try:
            outcomes.append(run_stacked(model, [call])[0])
        except Exception as error:  # this request's own error, delivered to it alone
            outcomes.append(error)
    return outcomes

