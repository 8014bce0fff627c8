"""A pool of blocking database connections, used from trio through worker threads.

PyMySQL and sqlite3 block, and a PyMySQL connection may be used by one thread
at a time (``threadsafety`` 1). So each unit of work (a whole transaction) runs
in ``trio.to_thread.run_sync`` under the pool's own ``CapacityLimiter``; the
limiter's size is the pool's size, so a thread that holds a token always finds
a connection (reused when idle, opened when not). No connection is shared by
two threads and none is opened per query.

Cancellation: a unit of work is never abandoned halfway. A cancelled caller
waits until its transaction has committed or rolled back (``to_thread``'s
default), so the database never holds half of a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import trio

from .dialect import Connection, Dialect
from .errors import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

IDLE_CHECK_SECONDS = 30.0
"""A connection idle this long is checked before use (the server may have closed it)."""
RETRIES = 5
"""How often a transaction that hit a deadlock or lock timeout runs again."""


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

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` in a worker thread and return its result."""
        self.runs += 1
        return await trio.to_thread.run_sync(self.run_blocking, work, limiter=self.limiter)

    def run_blocking(self, work: Callable[[Connection], T]) -> T:
        """The same, on the calling thread (start-up, migrations, tools)."""
        for attempt in range(RETRIES + 1):
            conn = self._checkout()
            try:
                result = work(conn)
            except StoreError:
                self._checkin(conn)
                raise
            except Exception as exc:
                if self.dialect.is_disconnect(exc):
                    self._discard(conn)
                    raise StoreUnavailable(f"{self.dialect.name}: connection lost ({exc})") from exc
                self._rollback_quietly(conn)
                if self.dialect.is_retryable(exc) and attempt < RETRIES:
                    self._checkin(conn)
                    time.sleep(0.005 * (2**attempt))
                    continue
                self._checkin(conn)
                if self.dialect.is_retryable(exc):
                    raise StoreUnavailable(f"{self.dialect.name}: busy ({exc})") from exc
                raise
            except BaseException:
                self._discard(conn)
                raise
            self._checkin(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._close_quietly(conn)

    def _checkout(self) -> Connection:
        with self._lock:
            entry = self._idle.pop() if self._idle else None
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
