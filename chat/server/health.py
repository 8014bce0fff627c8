"""Whether a node can serve: what ``/readyz`` answers and the ``*_up`` gauges show.

A probe task asks the database (``SELECT 1`` through the pool, so a pool whose
every connection is stuck counts as down too) and, in a cluster, Redis (``PING``)
every ``PROBE_SECONDS``, each under ``PROBE_TIMEOUT``; a store call that ran
out of its ``--db-timeout`` since the last good probe marks the database down at
once. So a frozen or stopped database or Redis shows within
``PROBE_SECONDS + PROBE_TIMEOUT`` (3 s), well inside the 5 s the operators'
checks expect, and clears at the first probe that succeeds.

Not ready either: the node is stopping (SIGTERM: a load balancer should send no
one new), or its presence leases are in doubt (it answers ``unavailable``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from chat.broker import BrokerUnavailable
from chat.store import Store, StoreError

log = logging.getLogger(__name__)

PROBE_SECONDS = 1.0
PROBE_TIMEOUT = 2.0


class Health:
    def __init__(
        self,
        store: Store,
        redis_ping: Callable[[], Awaitable[None]] | None,
        paused: Callable[[], bool],
    ) -> None:
        """``redis_ping``: None for a node without Redis; ``paused``: the node's
        presence leases are in doubt."""
        self._store = store
        self._redis_ping = redis_ping
        self._paused = paused
        self.database_error: str | None = None
        """Why the database counts as down; None: it answered the last probe."""
        self.redis_error: str | None = None
        self.stopping = False
        self._probed_at = 0.0
        """``trio.current_time()`` when the last database probe began."""

    @property
    def database_up(self) -> bool:
        return self._database_problem() is None

    @property
    def redis_up(self) -> bool | None:
        """None without Redis."""
        return None if self._redis_ping is None else self.redis_error is None

    def problems(self) -> dict[str, str]:
        """What keeps the node from serving, by part; empty: ready."""
        found: dict[str, str] = {}
        database = self._database_problem()
        if database is not None:
            found["database"] = database
        if self.redis_error is not None and self._redis_ping is not None:
            found["redis"] = self.redis_error
        if self._paused():
            found["presence"] = "this node cannot confirm its users' presence leases"
        if self.stopping:
            found["node"] = "stopping"
        return found

    def _database_problem(self) -> str | None:
        if self.database_error is not None:
            return self.database_error
        timed_out = self._store.pool.last_timeout
        if timed_out is not None and timed_out >= self._probed_at:
            return "a database call did not finish within --db-timeout"
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._probe_database)
                if self._redis_ping is not None:
                    nursery.start_soon(self._probe_redis, self._redis_ping)
            await trio.sleep(PROBE_SECONDS)

    async def _probe_database(self) -> None:
        started = trio.current_time()
        error: str | None = None
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await self._store.ping()
            except StoreError as exc:
                error = str(exc)
            self._change("database", error)
            self.database_error = error
            self._probed_at = started
            return
        self._change("database", f"no answer within {PROBE_TIMEOUT:g} s")
        self.database_error = f"no answer within {PROBE_TIMEOUT:g} s"

    async def _probe_redis(self, ping: Callable[[], Awaitable[None]]) -> None:
        error: str | None = f"no answer within {PROBE_TIMEOUT:g} s"
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await ping()
                error = None
            except BrokerUnavailable as exc:
                error = str(exc)
        self._change("redis", error)
        self.redis_error = error

    def _change(self, part: str, error: str | None) -> None:
        before = self.database_error if part == "database" else self.redis_error
        if (before is None) != (error is None):
            if error is None:
                log.warning("%s answers again", part)
            else:
                log.warning("%s is down: %s", part, error)
