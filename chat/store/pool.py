"""A pool of blocking database connections, used from trio through worker threads.

PyMySQL and sqlite3 block, and a PyMySQL connection may be used by one thread
at a time (``threadsafety`` 1). So each unit of work (a whole transaction) runs
in a worker thread (trio's thread cache, as ``trio.to_thread.run_sync`` uses it)
under the pool's own ``CapacityLimiter``; the
limiter's size is the pool's size, so a thread that holds a token always finds
a connection (reused when idle, opened when not). No connection is shared by
two threads and none is opened per query.

Cancellation: a unit of work is never abandoned halfway. A cancelled caller
waits until its transaction has committed or rolled back (as with
``trio.to_thread.run_sync``'s default), so the database never holds half of a request.

Deadline (``timeout``, the node's ``--db-timeout``): a caller stops *waiting* for
a unit of work that has not finished in that time and gets ``StoreTimeout`` (an
``unavailable`` answer). The thread itself cannot be stopped (a PyMySQL call
blocked on a frozen server cannot be interrupted): it goes on, and its
transaction still commits or rolls back as a whole when the server answers or
the connection's read timeout (30 s) ends it. So a timed-out request may have
happened after all: a ``send`` with a ``cid`` is safe to retry (the retry gets
the first one's ``ok``), one without may be stored twice. The abandoned thread
keeps its limiter token until it ends (it is given back then, not when the
caller gives up), so the pool never runs more connections than its size and
its capacity comes back by itself; while every token is held by such threads,
further calls time out waiting for one, which is the quick ``unavailable`` we
want. The deadline covers the wait for a token too.

Retries (``chat.store.retry``): a run that deadlocked or waited too long for a
lock runs again on the worker thread, a few times, after a short random wait, and
a read whose connection broke runs again on a fresh one; the caller hears only of
the last failure. No run starts after the caller's deadline (the thread is told
it), so a request the caller was told is ``unavailable`` is not carried out later
by a retry (a run already under way may still finish, as above).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Generic, NoReturn, Protocol, TypeVar

import trio

from .dialect import Connection, Dialect
from .errors import StoreError, StoreTimeout, StoreUnavailable
from .retry import Failure, RetryPolicy, classify

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

IDLE_CHECK_SECONDS = 30.0
"""A connection idle this long is checked before use (the server may have closed it)."""


class ConnectionPool:
    def __init__(self, dialect: Dialect, size: int) -> None:
        self.dialect = dialect
        self.limiter = trio.CapacityLimiter(size)
        self._idle: list[tuple[Connection, float]] = []
        self._lock = threading.Lock()
        self._closed = False
        self.runs = 0
        """Units of work run from trio so far (each is one transaction): what coalescing
        saves shows here."""
        self.timeout: float | None = None
        """Seconds a caller waits for a unit of work (and for a connection) before
        ``StoreTimeout``; None: as long as it takes."""
        self.timeouts = 0
        """Units of work given up on so far."""
        self.last_timeout: float | None = None
        """``trio.current_time()`` of the latest one (for the node's readiness)."""
        self.retry = RetryPolicy()
        """Which failed runs run again (deadlocks, lock waits; lost connections of reads)."""
        self.retries = 0
        """Runs started again after a retryable failure (counted from worker threads)."""
        self.gave_up = 0
        """Units of work still busy (deadlocked, lock wait) after every retry allowed."""

    async def run(
        self,
        work: Callable[[Connection], T],
        *,
        idempotent: bool = False,
        deadline: float | None = None,
    ) -> T:
        """Run ``work(connection)`` in a worker thread and return its result; raise
        ``StoreTimeout`` after ``timeout`` seconds, or at ``deadline``
        (``trio.current_time()``) if that is sooner: a coalesced batch's, whose calls
        were made before it started (see the module). ``idempotent``: the work only
        reads, so it may run again on a fresh connection if its own broke
        (``chat.store.retry``)."""
        self.runs += 1
        ends = self._ends(trio.current_time(), deadline)
        borrower = _Borrower()
        with trio.move_on_at(ends):
            # The deadline covers the wait for a connection too.
            await self.limiter.acquire_on_behalf_of(borrower)
            return await self._thread(work, idempotent, ends, borrower)
        raise self.timed_out()

    def start(
        self,
        work: Callable[[Connection], T],
        *,
        idempotent: bool = False,
        deadline: float | None = None,
    ) -> Awaitable[T]:
        """``run``, with its worker thread started now, before the caller's next
        checkpoint, when a connection is free; await the result once.

        ``trio.to_thread.run_sync`` starts its thread only after a checkpoint, that is
        behind every task ready to run: when a store batch has just woken a thousand
        sessions, the next batch would start tens of milliseconds later, with the
        database idle meanwhile (``chat.store.coalesce`` starts the next batch right
        after one is over). When no connection is free, the result waits for one as
        ``run`` does. Cancellation and the deadline are ``run``'s: a run with a deadline
        is abandoned by a cancelled or late caller (the thread finishes on its own and
        gives its connection back then); one without is waited for."""
        now = trio.current_time()
        ends = self._ends(now, deadline)
        borrower = _Borrower()
        try:
            if ends > now:
                self.limiter.acquire_on_behalf_of_nowait(borrower)
        except trio.WouldBlock:
            return self.run(work, idempotent=idempotent, deadline=deadline)
        self.runs += 1
        if ends <= now:
            return _raise(self.timed_out())
        return self._thread(work, idempotent, ends, borrower)

    def _thread(
        self, work: Callable[[Connection], T], idempotent: bool, ends: float, borrower: _Borrower
    ) -> Awaitable[T]:
        """Start ``work`` in a worker thread now, on the limiter token ``borrower`` holds
        (given back when the thread ends); the result waits for it until ``ends``. The
        thread is told the deadline: no retry starts after it (``run_blocking``)."""
        left = ends - trio.current_time()
        thread_deadline = None if ends == math.inf else time.monotonic() + left
        started = _Started(
            partial(self.run_blocking, work, idempotent=idempotent, deadline=thread_deadline),
            self.limiter,
            borrower,
        )
        return started.result(ends, self.timed_out)

    def _ends(self, now: float, deadline: float | None) -> float:
        """When a caller from ``now`` stops waiting (``trio.current_time()``; inf: never)."""
        ends = math.inf if self.timeout is None else now + self.timeout
        return ends if deadline is None else min(ends, deadline)

    def timed_out(self) -> StoreTimeout:
        """Count a call given up on at its deadline; its error (``unavailable``)."""
        self.timeouts += 1
        self.last_timeout = trio.current_time()
        limit = "its deadline" if self.timeout is None else f"{self.timeout:g} s"
        return StoreTimeout(f"{self.dialect.name}: no answer within {limit}")

    def run_blocking(
        self,
        work: Callable[[Connection], T],
        *,
        idempotent: bool = False,
        deadline: float | None = None,
    ) -> T:
        """The same, on the calling thread (start-up, migrations, tools). A run that
        failed for a retryable reason runs again (``chat.store.retry``), never after
        ``deadline`` (``time.monotonic()``; None: no deadline)."""
        attempt = 0
        fresh = False
        while True:
            attempt += 1
            conn = self._checkout(fresh=fresh)
            try:
                result = work(conn)
            except StoreError:
                self._checkin(conn)
                raise
            except Exception as exc:
                failure = classify(self.dialect, exc)
                if failure is Failure.LOST:
                    self.dialect.connection_lost(conn)
                    self._discard(conn)
                else:
                    self._rollback_quietly(conn)
                    self._checkin(conn)
                time_left = None if deadline is None else deadline - time.monotonic()
                wait = self.retry.next_delay(
                    failure, attempt, idempotent=idempotent, time_left=time_left
                )
                if wait is None:
                    if failure is Failure.LOST:
                        raise StoreUnavailable(
                            f"{self.dialect.name}: connection lost ({exc})"
                        ) from exc
                    if failure is Failure.BUSY:
                        with self._lock:
                            self.gave_up += 1
                        raise StoreUnavailable(
                            f"{self.dialect.name}: busy after {attempt} attempts ({exc})"
                        ) from exc
                    raise
                # The server may have dropped every idle connection at once (a restart):
                # after a lost one, the next run gets a new connection.
                fresh = failure is Failure.LOST
                with self._lock:
                    self.retries += 1
                log.debug(
                    "%s: run %d failed (%s), again in %.3f s", failure.value, attempt, exc, wait
                )
                time.sleep(wait)
                continue
            except BaseException:
                self._discard(conn)
                raise
            self._checkin(conn)
            return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._close_quietly(conn)

    def _checkout(self, *, fresh: bool = False) -> Connection:
        while True:
            with self._lock:
                entry = self._idle.pop() if self._idle and not fresh else None
            if entry is None or self.dialect.is_current(entry[0]):
                break
            self._close_quietly(entry[0])  # a host the store moved away from
        if entry is not None:
            conn, since = entry
            if time.monotonic() - since < IDLE_CHECK_SECONDS:
                return conn
            try:
                self.dialect.check_alive(conn)
                return conn
            except Exception:
                self._close_quietly(conn)
        try:
            return self.dialect.connect()
        except Exception as exc:
            raise StoreUnavailable(f"{self.dialect.name}: cannot connect ({exc})") from exc

    def _checkin(self, conn: Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append((conn, time.monotonic()))
                return
        self._close_quietly(conn)

    def _discard(self, conn: Connection) -> None:
        self._close_quietly(conn)

    def _rollback_quietly(self, conn: Connection) -> None:
        try:
            conn.rollback()
        except Exception:
            log.debug("rollback failed", exc_info=True)

    @staticmethod
    def _close_quietly(conn: Connection) -> None:
        try:
            conn.close()
        except Exception:
            log.debug("closing a connection failed", exc_info=True)


class _Borrower:
    """Holds a limiter token for a thread started by ``ConnectionPool.start``."""


class _Outcome(Protocol[T_co]):
    """What ``trio.lowlevel.start_thread_soon`` hands over: a value or an error."""

    def unwrap(self) -> T_co: ...


class _Started(Generic[T]):
    """A worker thread started at once (``ConnectionPool.start``), as
    ``trio.to_thread.run_sync`` would start it: it holds a limiter token until it ends,
    and its result is handed to the trio thread (``run_sync_soon``)."""

    def __init__(
        self, work: Callable[[], T], limiter: trio.CapacityLimiter, borrower: _Borrower
    ) -> None:
        self._limiter = limiter
        self._borrower = borrower
        self._outcome: _Outcome[T] | None = None
        self._done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def deliver(outcome: _Outcome[T]) -> None:  # in the worker thread
            # A run that is over has nobody waiting for this any more.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._finished, outcome)

        try:
            trio.lowlevel.start_thread_soon(work, deliver, name="chat store")
        except BaseException:
            limiter.release_on_behalf_of(borrower)
            raise

    def _finished(self, outcome: _Outcome[T]) -> None:  # in the trio thread
        self._limiter.release_on_behalf_of(self._borrower)
        self._outcome = outcome
        self._done.set()

    async def result(self, ends: float, timed_out: Callable[[], Exception]) -> T:
        if ends == math.inf:
            # No deadline: wait for the thread, as a cancelled caller of ``run`` does (the
            # cancellation arrives at the caller's next checkpoint).
            with trio.CancelScope(shield=True):
                await self._done.wait()
        else:
            with trio.move_on_at(ends):
                await self._done.wait()
        if self._outcome is None:
            raise timed_out()
        return self._outcome.unwrap()


async def _raise(error: Exception) -> NoReturn:
    raise error
