"""``ConnectionPool.start``: a unit of work whose worker thread is under way before the
caller's next checkpoint (a coalesced store batch starts the moment the one before it is
over), with ``run``'s deadline, cancellation and connection accounting (on an SQLite
file: what is tested is the pool's threads, not a database)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from chat.store import Store, StoreTimeout, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'chat.db'}", pool_size=2)
    yield opened
    opened.close()


async def test_a_started_run_is_under_way_before_the_callers_next_checkpoint(
    store: Store,
) -> None:
    began = threading.Event()

    def work(conn: Any) -> int:
        began.set()
        return 42

    result = store.pool.start(work)
    # No checkpoint since: trio.to_thread.run_sync would not have started its thread yet.
    assert began.wait(5), "the worker thread did not start before a checkpoint"
    assert await result == 42
    assert store.pool.limiter.borrowed_tokens == 0


async def test_a_late_run_answers_at_its_deadline_and_gives_its_connection_back_at_its_end(
    store: Store,
) -> None:
    release = threading.Event()
    store.pool.timeout = 0.2

    def stuck(conn: Any) -> str:
        release.wait(10)
        return "done"

    started = trio.current_time()
    with pytest.raises(StoreTimeout):
        await store.pool.start(stuck)
    assert 0.15 < trio.current_time() - started < 2
    # Abandoned, not stopped: the thread still holds its connection until it ends.
    assert store.pool.limiter.borrowed_tokens == 1
    release.set()
    borrowers = [object(), object()]
    with trio.fail_after(5):  # both connections free again: the thread gave its one back
        for borrower in borrowers:
            await store.pool.limiter.acquire_on_behalf_of(borrower)
    for borrower in borrowers:
        store.pool.limiter.release_on_behalf_of(borrower)
    store.pool.timeout = None
    assert await store.pool.start(lambda conn: "next") == "next"


async def test_a_cancelled_caller_without_a_deadline_waits_for_its_run(store: Store) -> None:
    finished = threading.Event()

    def slow(conn: Any) -> str:
        threading.Event().wait(0.2)
        finished.set()
        return "stored"

    with trio.CancelScope() as scope:
        result = store.pool.start(slow)
        scope.cancel()
        # Its transaction is never left halfway: the cancelled wait returns its result,
        # and the cancellation comes at the next checkpoint.
        assert await result == "stored"
        assert finished.is_set()
        await trio.lowlevel.checkpoint()
        raise AssertionError("the cancellation did not arrive")
    assert scope.cancelled_caught


async def test_with_every_connection_busy_a_run_waits_for_one(store: Store) -> None:
    release = threading.Event()

    def hold(conn: Any) -> str:
        release.wait(10)
        return "held"

    first = store.pool.start(hold)
    second = store.pool.start(hold)
    assert store.pool.limiter.borrowed_tokens == 2
    third = store.pool.start(lambda conn: "third")  # no connection free: it waits for one
    results: list[str] = []

    async def collect(result: Any) -> None:
        results.append(await result)

    async with trio.open_nursery() as nursery:
        for result in (third, first, second):
            nursery.start_soon(collect, result)
        await trio.sleep(0.1)
        assert results == []
        release.set()
    assert sorted(results) == ["held", "held", "third"]
    assert store.pool.limiter.borrowed_tokens == 0


async def test_a_store_call_cancelled_before_it_starts_runs_nothing(store: Store) -> None:
    """As with ``trio.to_thread.run_sync``: a caller cancelled already starts no
    transaction (found by review: the thread used to start before the checkpoint)."""
    runs = store.pool.runs
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.revoke_token(b"x" * 32)
    assert scope.cancelled_caught
    assert store.pool.runs == runs
