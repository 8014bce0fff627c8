"""A load process: its connections, its barrier with the parent, its counters.

Runs in a process of its own (``multiprocessing``, spawn), so several of them
can use several cores. The parent and a worker talk over a ``Pipe``: the
worker says ``("sync", info)`` and waits for the parent's answer, which is how
all workers log in first and start sending together. Progress goes through a
shared array of counters (``sent``, ``received`` per worker) that the parent
prints from.
"""

from __future__ import annotations

import contextlib
import resource
import time
import traceback
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

import attrs
import trio

from chat.client import tls_context

from .conn import BenchConnection, Json
from .model import PASSWORD, Job

Counters = Any
"""A ``multiprocessing.Array('q', 2 * procs)``: sent and received per worker."""


class BenchError(Exception):
    """The run cannot go on (a login failed, the server went away)."""


def raise_file_limit() -> int:
    """Lift the soft limit on open files to the hard one: thousands of sockets are the point."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


@attrs.define(eq=False)
class BenchUser:
    index: int
    name: str
    conn: BenchConnection
    id: int = 0
    device: int = 0
    """Which of the user's connections (``multidevice``: one per device; else 0)."""


EventHandler = Callable[[BenchUser, Json], None]


class Worker:
    def __init__(
        self, job: Job, pipe: Connection, counters: Counters, nursery: trio.Nursery
    ) -> None:
        self.job = job
        self.config = job.config
        self.ssl_context = (
            tls_context(self.config.ca_file, insecure=self.config.insecure)
            if self.config.tls
            else None
        )
        self.pipe = pipe
        self.counters = counters
        self.nursery = nursery
        self.users: dict[int, BenchUser] = {}
        self.more: list[BenchUser] = []
        """Further connections of those users (other devices, a second login)."""
        self.on_event: EventHandler = self._ignore
        self.stale = 0
        """Events from earlier runs (messages kept for a user since then): skipped."""
        self.tag = self.config.run_id + "|"

    # --- talking to the parent --------------------------------------------------

    async def sync(self, info: Any = None) -> Any:
        """Tell the parent we reached a barrier; return its answer once all workers did."""
        self.pipe.send(("sync", info))
        kind, payload = await trio.to_thread.run_sync(self.pipe.recv, abandon_on_cancel=True)
        if kind != "go":
            raise BenchError(f"the parent said {kind!r}")
        return payload

    def count_sent(self, n: int = 1) -> None:
        self.counters[2 * self.job.worker] += n

    def count_received(self, n: int = 1) -> None:
        self.counters[2 * self.job.worker + 1] += n

    # --- connections -------------------------------------------------------------

    def _ignore(self, user: BenchUser, event: Json) -> None:
        self.stale += 1

    def _dispatch(self, user: BenchUser, event: Json) -> None:
        if event.get("type") in ("message", "group_message"):
            text = event.get("text", "")
            if not isinstance(text, str) or not text.startswith(self.tag):
                self.stale += 1
                return
        self.on_event(user, event)

    async def connect(self, index: int, device: int | None = None) -> BenchUser:
        """A connection for user ``index``; with ``device``, one more of its connections
        (device k on the port k places after the user's own), kept apart in ``more``."""
        config = self.config
        holder: list[BenchUser] = []
        conn = await BenchConnection.open(
            config.host,
            config.port_for(index + (device or 0)),
            self.nursery,
            lambda event: self._dispatch(holder[0], event),
            self.ssl_context,
        )
        user = BenchUser(index, config.user_name(index), conn, device=device or 0)
        holder.append(user)
        if device is None:
            self.users[index] = user
        else:
            self.more.append(user)
        return user

    async def login(
        self,
        user: BenchUser,
        *,
        register_missing: bool = True,
        device: str | None = None,
        acks: bool = False,
    ) -> Json:
        """Log in with the password (registering the account first if it is missing);
        ``device`` and ``acks`` are protocol 1.2's (left out when not given, so an
        older server sees a version 1 login)."""
        extra: Json = {}
        if device is not None:
            extra["device"] = device
        if acks:
            extra["acks"] = True
        reply = await user.conn.call("login", name=user.name, password=PASSWORD, **extra)
        if reply.get("code") == "bad_credentials" and register_missing:
            registered = await user.conn.call("register", name=user.name, password=PASSWORD)
            if registered.get("type") == "error" and registered.get("code") != "name_taken":
                raise BenchError(f"cannot register {user.name}: {registered.get('message')}")
            reply = await user.conn.call("login", name=user.name, password=PASSWORD, **extra)
        if reply.get("type") != "ok":
            problem = f"{reply.get('code')}: {reply.get('message')}"
            raise BenchError(f"cannot log in {user.name}: {problem}")
        user.id = int(reply["user"]["id"])
        return reply

    async def connect_all(
        self, indexes: Iterable[int], *, login: bool = True, register_missing: bool = True
    ) -> list[float]:
        """Open (and log in) these users, a few at a time; returns each login's seconds."""
        limiter = trio.CapacityLimiter(self.config.login_concurrency)
        durations: list[float] = []

        async def one(index: int) -> None:
            async with limiter:
                user = await self.connect(index)
                if login:
                    started = time.monotonic()
                    await self.login(user, register_missing=register_missing)
                    durations.append(time.monotonic() - started)
                    self.count_sent()  # progress: logins count as requests done

        with trio.fail_after(self.config.setup_seconds):
            async with trio.open_nursery() as nursery:
                for index in indexes:
                    nursery.start_soon(one, index)
        return durations

    async def close_all(self) -> None:
        for user in [*self.users.values(), *self.more]:
            await user.conn.aclose()
        self.users.clear()
        self.more.clear()


def worker_main(job: Job, pipe: Connection, counters: Counters) -> None:
    """Process entry point: run the job's scenario, then report its result or its error."""
    raise_file_limit()
    try:
        result = trio.run(_run, job, pipe, counters)
    except Exception:
        pipe.send(("error", traceback.format_exc()))
    else:
        pipe.send(("result", result))
    finally:
        pipe.close()


async def _run(job: Job, pipe: Connection, counters: Counters) -> Any:
    from .devices import LOADS as DEVICE_LOADS
    from .loads import LOADS

    async with trio.open_nursery() as nursery:
        worker = Worker(job, pipe, counters, nursery)
        try:
            result = await {**LOADS, **DEVICE_LOADS}[job.scenario](worker)
            if isinstance(result, dict):
                result["stale"] = worker.stale
            return result
        finally:
            await worker.close_all()
            nursery.cancel_scope.cancel()
