"""Coalescing: many concurrent calls of one query become one transaction.

A node serves thousands of sessions, and each one that is woken reads its kept
messages (``pending``); many send at once (``store_direct``, ``store_group``).
Done one by one, a group message to 500 members costs 500 reads, each a thread
hop and a transaction, and every send a commit (on MariaDB a log flush). Here
the first caller runs a batch with everything queued; calls made while it runs
wait and go, together, in the next batch, led by the first of them.

What callers may rely on, exactly as with a call of their own:

- a batch *starts* after every call in it was made (a call never joins a batch
  that is already running), so a read sees everything committed before the call;
- a call returns only after its batch's transaction committed, and raises the
  batch's error if it failed.

A started batch always finishes: it runs shielded from cancellation, and every
call in it gets its result (or error), also a cancelled one, whose cancellation
then arrives at its next checkpoint, as for a call in a worker thread. That
matters when a batch has side effects after its commit: abandoning it there and
handing its calls to another leader would run them twice.

A cancelled call whose batch has not started leaves the queue (it never happened);
if it had been chosen to lead the next batch, the next queued call leads instead.
(Not one queued by ``submit``: see there.)

Waking: each waiting call sleeps on an event of its own, set when its batch has
finished or when it is its turn to lead, so a batch wakes its own calls and the
next leader, nobody else.

No gap between batches: when a batch is over and calls wait behind it, the next
batch starts at once, before any call of the one just over resumes: ``run_batch``
is called then, and what it starts before returning its awaitable (the store: a
worker thread) is under way while the woken callers run; the next leader finishes
it. (Woken first, the leader would run after all of them: a thousand after a busy
batch, tens of milliseconds of an idle database.)

Two steps: ``submit`` queues a call at once, without waiting, and its ``result()``
waits for it. A connection that pipelines sends submits each one as it reads it
(so they are stored in the order they were sent, several in one batch) and
waits for them one after the other. Only a call that is being waited for is
chosen to lead: a submitted call nobody waits for yet (its connection is busy
with an earlier one) never holds up everyone else's batch; it runs in whichever
batch comes next.

Fair batches: a batch runs one at a time, so a call waits for the batch running
when it is made and then for its own. Calls that are costly to run (a group send:
its membership check, its log position, a savepoint) can be ``heavy``; a batch
takes at most ``heavy_per_chain`` of them from one chain (one sender), and that
chain's later calls wait for the next batch, behind them, so the chain keeps its
order. Other chains' calls queued behind them go in this batch: one sender
pipelining costly calls fills a batch with a few of them, not with all it has in
flight, and everyone else's calls wait for a short batch, not a long one.

Deadlines (``deadline``: the store's ``--db-timeout``): each call has its own, from
the moment it is made, however many batches are ahead of it. A caller still waiting
at its deadline gets ``expired()`` (``StoreTimeout``: ``unavailable``): a plain call
that has not started leaves the queue (it never happens); a submitted one stays and
runs in its turn (it may have happened, as any timed-out call; its chain's later
calls follow it, never before it); one whose batch is running is left to finish
without it. A batch runs with the earliest deadline of its calls
(``batch_deadline``, which the store's transaction honours), and calls whose
deadline passed before their batch started are answered ``expired()`` without
running (with the submitted calls of their chain). So with a frozen database every
call answers within its deadline, not one deadline per batch stuck ahead of it.

Where ``run_batch`` gives up by ``batch_deadline`` (``batches_keep_deadline``: the
store's do), a waiting call needs no timer of its own: every batch ahead of it runs
with the earliest deadline of its calls and of the calls still queued, so each ends by
the waiting call's deadline at the latest, and so does the batch it runs in (or it is
answered ``expired()`` unrun). (The store sets its timeout once, at start-up: a timeout
shortened later would leave calls made before it with later deadlines.) A
cancel scope with a deadline per waiting call cost a noticeable share of the trio thread per
message of a closed-loop sender (about 5 %).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import attrs
import trio

Req = TypeVar("Req")
Res = TypeVar("Res")

MAX_BATCH = 256
"""Calls run in one batch at most; the rest go in the next one."""


@attrs.define(eq=False)
class _Call(Generic[Req, Res]):
    request: Req
    result: Res | None = None
    error: Exception | None = None
    finished: bool = False
    """Its batch ran (``result`` or ``error`` is set)."""
    leads: bool = False
    """It was chosen to run the next batch."""
    waiting: bool = False
    """Its ``result()`` is being awaited (only such a call can be chosen to lead)."""
    submitted: bool = False
    """Queued by ``submit``: it runs even if the wait for it is cancelled."""
    deadline: float | None = None
    """``trio.current_time()`` by which its caller gets an answer (None: no deadline)."""
    wake: trio.Event | None = None
    """Set once: when its batch finished, or when it must lead. Made only when the call
    has to wait (most answers of a pipelining connection are in before it asks)."""

    def wake_event(self) -> trio.Event:
        if self.wake is None:
            self.wake = trio.Event()
        return self.wake


@attrs.define(eq=False)
class _Running(Generic[Req, Res]):
    """A started batch: its calls (``run``: those that run; ``late``: those past their
    deadline), and what ``run_batch`` returned, to be awaited by its leader."""

    batch: list[_Call[Req, Res]]
    run: list[_Call[Req, Res]]
    late: set[_Call[Req, Res]]
    started: float
    results: Awaitable[Sequence[Res]] | None = None
    failed: Exception | None = None
    """``run_batch`` itself raised."""


class Submitted(Generic[Req, Res]):
    """A queued call: its place in the order of calls is fixed; ``result()`` waits for it."""

    def __init__(self, coalescer: Coalescer[Req, Res], call: _Call[Req, Res]) -> None:
        self._coalescer = coalescer
        self._call = call

    async def result(self) -> Res:
        """Wait for the call's batch (leading it if nobody else does); await once."""
        return await self._coalescer._result(self._call)


class Coalescer(Generic[Req, Res]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[Req]], Awaitable[Sequence[Res]]],
        max_batch: int = MAX_BATCH,
        chain: Callable[[Req], Hashable] | None = None,
        heavy: Callable[[Req], bool] | None = None,
        heavy_per_chain: int = 0,
        deadline: Callable[[], float | None] | None = None,
        expired: Callable[[], Exception] | None = None,
        batches_keep_deadline: bool = False,
    ) -> None:
        """``chain``: which submitted calls follow one another (a sender's pipelined
        sends): when a batch fails, the submitted calls of its chains still queued fail
        with it, never stored after an earlier one of theirs was not.
        ``heavy``, ``heavy_per_chain``: which calls are costly, and how many of one
        chain's a batch takes at most (see "Fair batches" above; needs ``chain``).
        ``deadline``: seconds a call may take from when it is made (None: no limit);
        ``expired``: the error of a call past it (see "Deadlines" above).
        ``batches_keep_deadline``: ``run_batch`` gives up by ``batch_deadline``, so the
        calls waiting for it arm no timer of their own (see "Deadlines")."""
        if heavy is not None and (chain is None or heavy_per_chain < 1):
            raise ValueError(
                "heavy calls are counted per chain: give chain and heavy_per_chain >= 1"
            )
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._chain = chain
        self._heavy = heavy
        self._heavy_per_chain = heavy_per_chain
        self._queue: list[_Call[Req, Res]] = []
        self._running: _Running[Req, Res] | None = None
        """A batch started when the one before it was over, waiting for its leader to
        finish it (``_lead``)."""
        self._busy = False
        """A leader is at work, or a call has been told to lead. (A batch may be started
        with nobody leading it yet, ``_running``: the next call waited for leads it.)"""
        self.batches = 0
        """Batches run so far (each is one transaction of the store)."""
        self._timeout = deadline
        self._timed_waits = not batches_keep_deadline
        self._expired = expired or (lambda: TimeoutError("no answer in time"))
        self.batch_deadline: float | None = None
        """While a batch runs: the earliest deadline of its calls (``trio.current_time()``),
        by which ``run_batch`` should give up; None: none."""
        self.observe: Callable[[int, float], None] | None = None
        """Told each batch's size and seconds once it is over (the node's metrics)."""

    async def __call__(self, request: Req) -> Res:
        return await self._result(self._submit(request))

    def submit(self, request: Req) -> Submitted[Req, Res]:
        """Queue a call now, without waiting: it goes in the next batch that starts.
        Its ``result()`` must be awaited (that is what makes sure a batch runs). Unlike
        a plain call, it is never taken back: a cancelled ``result()`` still waits for
        it (shielded) and returns its answer, so the calls submitted after it, which run
        anyway, never leave a gap behind them."""
        call = self._submit(request)
        call.submitted = True
        return Submitted(self, call)

    def _submit(self, request: Req) -> _Call[Req, Res]:
        call: _Call[Req, Res] = _Call(request)
        timeout = self._timeout() if self._timeout is not None else None
        if timeout is not None:
            call.deadline = trio.current_time() + timeout
        self._queue.append(call)
        return call

    async def _result(self, call: _Call[Req, Res]) -> Res:
        call.waiting = True
        if not call.finished:
            if not self._busy:
                self._busy = True
                call.leads = True
            else:
                try:
                    if call.deadline is None or not self._timed_waits:
                        await call.wake_event().wait()
                    else:
                        with trio.move_on_at(call.deadline) as waited:
                            await call.wake_event().wait()
                        if waited.cancelled_caught and not call.finished:
                            self._give_up(call)
                except trio.Cancelled:
                    if call in self._queue and not call.submitted:
                        # Its batch has not started: it never happened.
                        call.waiting = False
                        self._queue.remove(call)
                        if call.leads:
                            self._next_leader()
                        raise
                    # Its batch is running, or it was submitted (see ``submit``): it
                    # completes, and the cancellation arrives at the caller's next
                    # checkpoint.
                    with trio.CancelScope(shield=True):
                        if not call.leads and not call.finished:
                            await call.wake_event().wait()
                        await self._lead_until(call)
                    return self._answer(call)
            await self._lead_until(call)
        # A call that ran in an earlier batch returns without a checkpoint: a pipelining
        # connection collects several answers in a row, then lets its writer run once.
        return self._answer(call)

    def _give_up(self, call: _Call[Req, Res]) -> None:
        """The caller's deadline passed before its call finished: raise ``expired()``
        (see "Deadlines")."""
        call.waiting = False
        # A submitted one stays queued and runs in its turn, nobody waiting for it.
        if call in self._queue and not call.submitted:
            self._queue.remove(call)  # it never happens
        if call.leads:
            # Chosen to lead as its deadline passed: the next waiting call leads instead.
            call.leads = False
            self._next_leader()
        raise self._expired()

    async def _lead_until(self, call: _Call[Req, Res]) -> None:
        """If ``call`` leads: run batches until its own has run (calls submitted before
        it may fill the first), then hand over to the next leader."""
        if call.finished:
            return
        try:
            while not call.finished:
                await self._lead()
        finally:
            self._next_leader()

    @staticmethod
    def _answer(call: _Call[Req, Res]) -> Res:
        if call.error is not None:
            raise _fresh(call.error)
        return call.result  # type: ignore[return-value]

    def _start(self) -> _Running[Req, Res]:
        """Start the next batch (the queued calls, up to ``max_batch``): ``run_batch`` is
        called now, and what it starts before returning its awaitable (the store: a
        worker thread) runs from now on."""
        batch, self._queue = self._next_batch()
        self.batches += 1
        started = trio.current_time()
        late = self._late(batch, started)
        run = [call for call in batch if call not in late] if late else batch
        running = _Running(batch, run, late, started)
        if run:
            # Calls left queued count too: one held back (by "Fair batches") may be
            # older than every call of this batch, and with ``batches_keep_deadline``
            # nothing but the batches ahead of it keeps its deadline.
            deadlines = [
                call.deadline
                for call in itertools.chain(run, self._queue)
                if call.deadline is not None
            ]
            self.batch_deadline = min(deadlines, default=None)
            try:
                running.results = self._run_batch([call.request for call in run])
            except Exception as exc:
                running.failed = exc
        return running

    async def _lead(self) -> None:
        """Finish the running batch (starting it first if none is), shielded; then start
        the next one, before any call of this one resumes."""
        running = self._running if self._running is not None else self._start()
        self._running = None
        batch, run, late = running.batch, running.run, running.late
        failed = running.failed
        with trio.CancelScope(shield=True):
            try:
                if running.results is not None:
                    results = await running.results
                    for call, result in zip(run, results, strict=True):
                        call.result = result
            except Exception as exc:
                failed = exc
            finally:
                self.batch_deadline = None
        if failed is not None:
            for call in run:
                call.error = failed
        if self.observe is not None:
            self.observe(len(batch), trio.current_time() - running.started)
        if late:
            error = self._expired()
            for call in late:
                call.error = error
            if self._chain is not None:
                batch += self._followers(list(late), error)
        if failed is not None and self._chain is not None:
            batch += self._followers(run, failed)
        if any(call.waiting for call in self._queue):
            # The next batch starts at once: its worker thread is under way before the
            # calls woken below run (a thousand of them after a busy batch; waking its
            # leader first would leave the database idle until they all had). As ever,
            # only for a call that is waited for (see ``submit``).
            self._running = self._start()
        for call in batch:
            call.finished = True
            call.leads = False
            if call.wake is not None:
                call.wake.set()

    def _late(self, batch: list[_Call[Req, Res]], now: float) -> set[_Call[Req, Res]]:
        """The calls of a batch about to start whose deadline has passed, with the calls
        of their chains after them (a chain's calls never run after an earlier one of
        theirs did not): answered ``expired()`` without running."""
        late = {call for call in batch if call.deadline is not None and call.deadline <= now}
        if late and self._chain is not None:
            chains = {self._chain(call.request) for call in late if call.submitted}
            late |= {
                call for call in batch if call.submitted and self._chain(call.request) in chains
            }
        return late

    def _next_batch(self) -> tuple[list[_Call[Req, Res]], list[_Call[Req, Res]]]:
        """The queued calls that go in the next batch, and those left queued, each in
        queue order."""
        if self._heavy is None:
            return self._queue[: self._max_batch], self._queue[self._max_batch :]
        assert self._chain is not None
        batch: list[_Call[Req, Res]] = []
        left: list[_Call[Req, Res]] = []
        heavy_taken: dict[Hashable, int] = {}
        held: set[Hashable] = set()
        """Chains with a call left queued: their later calls stay behind it."""
        for call in self._queue:
            if len(batch) >= self._max_batch:
                left.append(call)
                continue
            heavy = self._heavy(call.request)
            if not heavy and not held:
                batch.append(call)  # the common case: no chain to look at
                continue
            chain = self._chain(call.request)
            if chain in held:
                left.append(call)
            elif heavy:
                taken = heavy_taken.get(chain, 0)
                if taken >= self._heavy_per_chain:
                    held.add(chain)
                    left.append(call)
                else:
                    heavy_taken[chain] = taken + 1
                    batch.append(call)
            else:
                batch.append(call)
        return batch, left

    def _followers(self, batch: list[_Call[Req, Res]], error: Exception) -> list[_Call[Req, Res]]:
        """Take the submitted calls queued behind a failed batch on its chains out of
        the queue, failed with its error (see ``chain``)."""
        assert self._chain is not None
        chains = {self._chain(call.request) for call in batch if call.submitted}
        followers = [
            call for call in self._queue if call.submitted and self._chain(call.request) in chains
        ]
        if followers:
            gone = set(followers)
            self._queue = [call for call in self._queue if call not in gone]
            for call in followers:
                call.error = error
        return followers

    def _next_leader(self) -> None:
        """Hand the next batch to the first call waited for, of the batch started
        already or else of the queue, or become idle (then the next call waited for
        leads: it finishes the started batch, if any, then takes all that is queued)."""
        # All of the started batch's calls: one answered ``expired()`` unrun is finished
        # by its leader too (it may be the only one waiting).
        started = self._running.batch if self._running is not None else []
        for call in itertools.chain(started, self._queue):
            if call.waiting:
                call.leads = True
                call.wake_event().set()
                return
        self._busy = False


def _fresh(error: Exception) -> Exception:
    """A copy of a batch's error for one caller: raising one object in many tasks would
    chain every caller's frames onto one traceback."""
    try:
        copied = copy.copy(error)
    except Exception:
        return error
    return copied.with_traceback(error.__traceback__)
