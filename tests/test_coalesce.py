"""The coalescer's promises, checked without a database (its batches are plain coroutines)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

import pytest
import trio
import trio.testing

from chat.store.coalesce import Coalescer, Submitted


class Batches:
    """A batch function whose n-th batch waits for ``gate(n)``; like the store's (a
    transaction in a worker thread), a batch that started cannot be cancelled."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.order: list[list[str]] = []
        """Each batch's requests in the order they were made."""
        self.gates: dict[int, trio.Event] = {}
        self.fail: set[int] = set()

    def gate(self, n: int) -> trio.Event:
        return self.gates.setdefault(n, trio.Event())

    async def __call__(self, requests: Sequence[str]) -> list[str]:
        n = len(self.seen)
        self.seen.append(sorted(requests))
        self.order.append(list(requests))
        with trio.CancelScope(shield=True):
            await self.gate(n).wait()
        if n in self.fail:
            raise ValueError(f"batch {n} failed")
        return [f"{request}!" for request in requests]


async def test_calls_made_while_a_batch_runs_share_the_next_one() -> None:
    batches = Batches()
    coalesce = Coalescer(batches)
    results: dict[str, str] = {}

    async def call(name: str) -> None:
        results[name] = await coalesce(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a")
        await trio.testing.wait_all_tasks_blocked()
        for name in "bcd":
            nursery.start_soon(call, name)
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(1).set()
    assert batches.seen == [["a"], ["b", "c", "d"]]
    assert results == {name: f"{name}!" for name in "abcd"}


async def test_a_cancelled_call_whose_batch_runs_still_gets_its_result() -> None:
    """Like a call in a worker thread: the batch commits, so the caller must learn it.
    (Which of b and c leads their batch is up to trio's scheduler, so try it often.)"""
    for _ in range(20):
        await _cancel_inside_a_running_batch()


async def _cancel_inside_a_running_batch() -> None:
    batches = Batches()
    coalesce = Coalescer(batches)
    got: list[str] = []
    scope = trio.CancelScope()

    async def cancelled_caller() -> None:
        with scope:
            got.append(await coalesce("c"))
            await trio.lowlevel.checkpoint()  # the cancellation arrives here
            got.append("not reached")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(coalesce, "a")  # batch 0, holds the coalescer busy
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(coalesce, "b")
        nursery.start_soon(cancelled_caller)
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        assert batches.seen[1] == ["b", "c"]  # c is in a running batch (leading or not)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # still waiting for its batch, shielded
        batches.gate(1).set()
    assert got == ["c!"]
    assert scope.cancelled_caught


async def test_a_cancelled_call_whose_batch_has_not_started_never_happens() -> None:
    batches = Batches()
    coalesce = Coalescer(batches)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(coalesce, "a")
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01):
            await coalesce("gone")
        nursery.start_soon(coalesce, "b")
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(1).set()
    assert batches.seen == [["a"], ["b"]]


async def test_a_failed_batch_fails_each_call_with_its_own_copy_of_the_error() -> None:
    batches = Batches()
    batches.fail.add(1)
    coalesce = Coalescer(batches)
    errors: list[BaseException] = []

    async def call(name: str) -> None:
        try:
            await coalesce(name)
        except ValueError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a")
        await trio.testing.wait_all_tasks_blocked()
        for name in "bcd":
            nursery.start_soon(call, name)
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(1).set()
    assert [str(e) for e in errors] == ["batch 1 failed"] * 3
    assert len({id(e) for e in errors}) == 3
    with pytest.raises(ValueError, match="batch 1"):
        raise errors[0]


async def test_a_batch_with_work_after_its_commit_runs_once_though_its_leader_is_cancelled() -> (
    None
):
    """A batch commits, then awaits more (as routing after a commit would). Cancelling
    its leader meanwhile must not abandon it and hand its calls to another leader, which
    would run them a second time; every caller, the cancelled leader too, gets its
    result."""
    committed: list[list[str]] = []
    after_commit = trio.Event()

    async def commit_then_wait(requests: Sequence[str]) -> list[str]:
        committed.append(sorted(requests))
        await after_commit.wait()  # not shielded by the batch function itself
        return [f"{request}!" for request in requests]

    coalesce = Coalescer(commit_then_wait)
    got: dict[str, str] = {}
    leader = trio.CancelScope()

    async def call(name: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            got[name] = await coalesce(name)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a", leader)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, "b")
        await trio.testing.wait_all_tasks_blocked()
        leader.cancel()
        await trio.testing.wait_all_tasks_blocked()
        after_commit.set()
    assert committed == [["a"], ["b"]]
    assert got == {"a": "a!", "b": "b!"}
    assert leader.cancelled_caught


class Wakeups(trio.abc.Instrument):
    """Counts tasks made runnable."""

    def __init__(self) -> None:
        self.count = 0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def test_a_finished_batch_wakes_its_own_calls_and_the_next_leader_only() -> None:
    batches = Batches()
    coalesce = Coalescer(batches)
    with trio.fail_after(10):
        await _wake_only_whom_it_concerns(batches, coalesce)


async def _wake_only_whom_it_concerns(batches: Batches, coalesce: Coalescer[str, str]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(coalesce, "a")  # batch 0
        await trio.testing.wait_all_tasks_blocked()
        for i in range(50):  # batch 1, waiting
            nursery.start_soon(coalesce, f"w{i}")
        await trio.testing.wait_all_tasks_blocked()
        wakeups = Wakeups()
        trio.lowlevel.add_instrument(wakeups)
        try:
            batches.gate(0).set()
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(wakeups)
            batches.gate(1).set()  # a failure below must not leave batch 1 hanging
        # batch 0's task, batch 1's leader, and a few of trio's own (this test's):
        # not the 49 others waiting for batch 1.
        assert wakeups.count < 10, wakeups.count
        assert batches.seen[1] == sorted(f"w{i}" for i in range(50))


async def test_submitted_calls_keep_their_place_and_run_in_the_next_batch() -> None:
    """``submit`` queues at once (a pipelining connection's sends, in the order read);
    they run in the next batch, before calls made after them, and an answer that is
    in already is returned without waiting."""
    batches = Batches()
    coalesce = Coalescer(batches)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(coalesce, "a")  # batch 0, holds the coalescer busy
        await trio.testing.wait_all_tasks_blocked()
        first, second = coalesce.submit("s2"), coalesce.submit("s1")
        nursery.start_soon(coalesce, "b")
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(1).set()
        await trio.testing.wait_all_tasks_blocked()
        assert batches.order == [["a"], ["s2", "s1", "b"]]
        assert (await first.result(), await second.result()) == ("s2!", "s1!")


async def test_a_submitted_call_nobody_waits_for_never_holds_up_a_batch() -> None:
    """Only a call being waited for leads: one submitted by a connection busy with an
    earlier answer must not stall everyone behind it."""
    batches = Batches()
    coalesce = Coalescer(batches)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(coalesce, "a")
        await trio.testing.wait_all_tasks_blocked()
        submitted = coalesce.submit("s")
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        assert batches.seen == [["a"]]  # nobody waits: no batch runs yet
        nursery.start_soon(coalesce, "b")  # someone else's call leads, and takes it along
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(1).set()
        await trio.testing.wait_all_tasks_blocked()
        assert batches.seen == [["a"], ["b", "s"]]
        assert await submitted.result() == "s!"


async def test_a_cancelled_wait_for_a_submitted_call_still_runs_it() -> None:
    """A submitted call is never taken back (later ones of its connection run anyway:
    taking it back would leave a gap); its cancelled waiter gets the answer, and the
    cancellation at its next checkpoint."""
    batches = Batches()
    coalesce = Coalescer(batches)
    got: list[str] = []
    scope = trio.CancelScope()

    async def cancelled_waiter() -> None:
        with scope:
            got.append(await submitted.result())
            await trio.lowlevel.checkpoint()
            got.append("not reached")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(coalesce, "a")
        await trio.testing.wait_all_tasks_blocked()
        submitted = coalesce.submit("s")
        nursery.start_soon(cancelled_waiter)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        assert batches.seen == [["a"], ["s"]]  # it still led its batch
        batches.gate(1).set()
    assert got == ["s!"]
    assert scope.cancelled_caught


async def test_a_failed_batch_fails_the_calls_queued_behind_it_on_its_chains() -> None:
    """A sender's pipelined sends are a chain: when a batch with one of them fails, its
    later ones still queued fail too (stored after an earlier one was not, they would
    leave a gap). Other chains' calls, and plain calls, run as usual."""
    batches = Batches()
    batches.fail.add(0)
    coalesce = Coalescer(batches, chain=lambda request: request[0])
    got: dict[str, str] = {}

    async def wait_for(name: str, submitted: Submitted[str, str]) -> None:
        try:
            got[name] = await submitted.result()
        except ValueError as exc:
            got[name] = str(exc)

    async def call(name: str) -> None:
        got[name] = await coalesce(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for, "a1", coalesce.submit("a1"))  # batch 0, fails
        await trio.testing.wait_all_tasks_blocked()
        behind = {name: coalesce.submit(name) for name in ("a2", "b1", "a3")}
        nursery.start_soon(call, "c1")
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(1).set()
        for name, submitted in behind.items():
            nursery.start_soon(wait_for, name, submitted)
    assert batches.seen == [["a1"], ["b1", "c1"]]
    assert got == {
        "a1": "batch 0 failed",
        "a2": "batch 0 failed",
        "a3": "batch 0 failed",
        "b1": "b1!",
        "c1": "c1!",
    }


async def test_a_batch_takes_a_few_heavy_calls_of_one_chain_and_everyone_elses() -> None:
    """Fair batches: one chain (a sender pipelining group sends) gets at most
    ``heavy_per_chain`` heavy calls into a batch; its later calls, heavy or not, wait
    behind them for the next batch (its order holds), while other chains' calls queued
    after them go in this batch instead of waiting a long batch more."""
    batches = Batches()
    coalesce = Coalescer(
        batches,
        chain=lambda request: request[0],
        heavy=lambda request: request[1] == "G",
        heavy_per_chain=2,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(coalesce, "x-")  # batch 0, holds the coalescer busy
        await trio.testing.wait_all_tasks_blocked()
        queued = [
            coalesce.submit(name) for name in ("aG1", "aG2", "aG3", "b-1", "a-4", "cG1", "cG2")
        ]
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(1).set()
        batches.gate(2).set()
        answers = [await submitted.result() for submitted in queued]
    assert batches.order == [["x-"], ["aG1", "aG2", "b-1", "cG1", "cG2"], ["aG3", "a-4"]]
    assert answers == ["aG1!", "aG2!", "aG3!", "b-1!", "a-4!", "cG1!", "cG2!"]


def test_heavy_calls_are_counted_per_chain() -> None:
    with pytest.raises(ValueError, match="chain"):
        Coalescer(Batches(), heavy=lambda request: True, heavy_per_chain=2)


# --- deadlines (issue 24): each call's own, however many batches are ahead ---------------


class Late(Exception):
    """What a call past its deadline gets (the store's is ``StoreTimeout``)."""


def with_deadlines(batches: Batches, **options: object) -> Coalescer[str, str]:
    return Coalescer(batches, deadline=lambda: 5.0, expired=lambda: Late(), **options)  # type: ignore[arg-type]


async def test_a_call_behind_a_stuck_batch_answers_at_its_own_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The batch ahead is stuck and does not give up (a thread that cannot be stopped):
    a call waiting behind it still answers ``expired()`` 5 s after it was made, and,
    not having started, never runs."""
    batches = Batches()
    coalesce = with_deadlines(batches)
    answered: dict[str, tuple[float, object]] = {}

    async def call(name: str) -> None:
        try:
            result = await coalesce(name)
            answered[name] = (trio.current_time(), result)
        except Late as exc:
            answered[name] = (trio.current_time(), exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a")
        await trio.sleep(1)
        nursery.start_soon(call, "b")
        await trio.sleep(2)
        nursery.start_soon(call, "c")
        await trio.sleep(20)
        batches.gate(0).set()
    assert answered["a"] == (23.0, "a!")  # the stuck batch's own call waits for it
    assert answered["b"][0] == pytest.approx(6.0)
    assert isinstance(answered["b"][1], Late)
    assert answered["c"][0] == pytest.approx(8.0)
    assert isinstance(answered["c"][1], Late)
    assert batches.seen == [["a"]]


class HonouringBatches(Batches):
    """Batches that give up at the coalescer's ``batch_deadline``, as the store's do."""

    coalescer: Coalescer[str, str]

    async def __call__(self, requests: Sequence[str]) -> list[str]:
        deadline = self.coalescer.batch_deadline
        assert deadline is not None
        n = len(self.seen)
        self.seen.append(sorted(requests))
        with trio.move_on_at(deadline):  # the pool abandons its thread at the deadline
            await self.gate(n).wait()
            return [f"{request}!" for request in requests]
        raise Late()


@pytest.mark.parametrize("batches_keep_deadline", [False, True])
async def test_every_call_answers_within_its_deadline_however_many_batches_are_stuck(
    autojump_clock: trio.abc.Clock, batches_keep_deadline: bool
) -> None:
    """A frozen database: every batch gets stuck. Calls made one a second each answer
    within 5 s of being made (a batch runs with its earliest call's deadline), where
    before the second waited for the first batch's deadline and then its own. Also when
    the waiting calls arm no timer of their own (``batches_keep_deadline``, the store's
    way): the batches' deadlines alone answer each in time."""
    batches = HonouringBatches()
    coalesce = with_deadlines(batches, batches_keep_deadline=batches_keep_deadline)
    batches.coalescer = coalesce
    made: dict[str, float] = {}
    answered: dict[str, float] = {}

    async def call(name: str) -> None:
        made[name] = trio.current_time()
        with pytest.raises(Late):
            await coalesce(name)
        answered[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for name in "abcdefgh":
            nursery.start_soon(call, name)
            await trio.sleep(1)
    assert set(answered) == set("abcdefgh")
    for name in answered:
        assert 0 < answered[name] - made[name] <= 5.0, (name, made[name], answered[name])


async def test_a_late_submitted_call_fails_its_chain_without_running(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A pipelined send whose deadline passed before its batch started is answered
    ``expired()`` without running, and so are its sender's later ones: never stored
    after an earlier one of theirs was not."""
    batches = Batches()
    coalesce = with_deadlines(batches, chain=lambda request: request[0])
    outcomes: dict[str, object] = {}

    async def wait(name: str, submitted: Submitted[str, str]) -> None:
        try:
            outcomes[name] = await submitted.result()
        except Late as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "a1", coalesce.submit("a1"))  # leads batch 0, stuck
        await trio.testing.wait_all_tasks_blocked()
        x1, x2 = coalesce.submit("x1"), coalesce.submit("x2")
        nursery.start_soon(wait, "y1", coalesce.submit("y1"))
        await trio.sleep(10)  # batch 0 outlasts everyone's deadline
        batches.gate(0).set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, "x1", x1)
        nursery.start_soon(wait, "x2", x2)
        nursery.start_soon(wait, "z1", coalesce.submit("z1"))
        await trio.testing.wait_all_tasks_blocked()
        batches.gate(1).set()
    assert outcomes["a1"] == "a1!"
    assert all(isinstance(outcomes[name], Late) for name in ("x1", "x2", "y1"))
    assert outcomes["z1"] == "z1!"
    assert batches.seen == [["a1"], ["z1"]]


class StartsNow:
    """A batch function like the store's: what it starts is under way when it returns (a
    worker thread), and what it returns is awaited for the results."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.started: list[list[str]] = []
        self.gates: dict[int, trio.Event] = {}

    def gate(self, n: int) -> trio.Event:
        return self.gates.setdefault(n, trio.Event())

    def __call__(self, requests: Sequence[str]) -> Awaitable[list[str]]:
        n = len(self.started)
        self.started.append(list(requests))
        self.log.append(f"start {n}")
        return self._results(n, requests)

    async def _results(self, n: int, requests: Sequence[str]) -> list[str]:
        await self.gate(n).wait()
        return [f"{request}!" for request in requests]


async def test_the_next_batch_starts_before_any_call_of_the_last_one_resumes() -> None:
    """A batch that is over starts the next one (the store: its worker thread) before
    its own calls resume: after a busy batch a thousand callers are woken, and the
    database would be idle until they all had run."""
    batches = StartsNow()
    coalesce = Coalescer(batches)

    async def call(request: str) -> None:
        assert await coalesce(request) == f"{request}!"
        batches.log.append(f"resumed {request}")

    async with trio.open_nursery() as nursery:
        try:
            nursery.start_soon(call, "a")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "b")
            nursery.start_soon(call, "c")
            await trio.testing.wait_all_tasks_blocked()
            assert batches.log == ["start 0"]
            batches.gate(0).set()
            await trio.testing.wait_all_tasks_blocked()
            assert batches.log == ["start 0", "start 1", "resumed a"]
        finally:
            batches.gate(1).set()  # a batch cannot be cancelled: let it end either way
    assert sorted(batches.log[3:]) == ["resumed b", "resumed c"]
    assert [sorted(requests) for requests in batches.started] == [["a"], ["b", "c"]]


async def test_a_call_past_its_deadline_when_the_next_batch_starts_is_answered_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A frozen database, and no timer per call (the store's way): the next batch
    starts as one gives up, and a call made just after the first one has passed its
    deadline by then: it is answered ``expired()`` unrun, at once, also when it is the
    only call waiting (it leads the started batch; found hanging by review)."""
    coalescer: Coalescer[str, str] | None = None

    async def give_up(deadline: float | None) -> list[str]:
        assert deadline is not None
        await trio.sleep_until(deadline + 0.002)  # gives up at it, noticed a little late
        raise Late()

    def run_batch(requests: Sequence[str]) -> Awaitable[list[str]]:
        assert coalescer is not None
        return give_up(coalescer.batch_deadline)

    coalescer = Coalescer(
        run_batch, deadline=lambda: 1.0, expired=lambda: Late(), batches_keep_deadline=True
    )
    answered: dict[str, float] = {}

    async def call(name: str) -> None:
        with pytest.raises(Late):
            await coalescer(name)
        answered[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a")
        await trio.sleep(0.001)
        nursery.start_soon(call, "b")
        await trio.sleep(30)
        if "b" not in answered:
            running = coalescer._running
            for stuck in running.batch if running is not None else []:
                stuck.wake_event().set()  # so that the failure ends instead of hanging
        assert answered.get("b") == pytest.approx(1.002, abs=0.01), answered
    assert answered["a"] == pytest.approx(1.002, abs=0.01)
