"""Shared test plumbing: real databases, real nodes on port 0, real TCP clients.

Testing rules: everything listens on 127.0.0.1 with port 0; every MariaDB test
gets a database of its own, created here and dropped afterwards; the suite
talks to real MariaDB (``CHAT_TEST_MYSQL``, default root on 127.0.0.1:3306).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pymysql
import trio

from chat.broker import Broker, MemoryBroker
from chat.client import ChatClient, connect
from chat.server import Node, Settings
from chat.store import Store, open_store

MYSQL_URL = os.environ.get("CHAT_TEST_MYSQL", "mysql://root@127.0.0.1:3306")
RUN_ID = uuid.uuid4().hex[:8]
_counter = itertools.count(1)


def _mysql_admin() -> pymysql.connections.Connection[Any]:
    from chat.store import dialect_for

    dialect = dialect_for(f"{MYSQL_URL}/admin")
    return pymysql.connect(
        host=dialect.host,  # type: ignore[attr-defined]
        port=dialect.port,  # type: ignore[attr-defined]
        user=dialect.user,  # type: ignore[attr-defined]
        password=dialect.password,  # type: ignore[attr-defined]
        autocommit=True,
    )


@contextmanager
def mysql_database() -> Iterator[str]:
    """A fresh, uniquely named MariaDB database URL; dropped on exit."""
    name = f"chat_test_{RUN_ID}_{next(_counter)}"
    try:
        yield f"{MYSQL_URL}/{name}"
    finally:
        conn = _mysql_admin()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'chat.db'}"
    else:
        with mysql_database() as url:
            yield url


@asynccontextmanager
async def running_node(
    url: str | Store, broker: Broker | None = None, **settings: Any
) -> AsyncIterator[Node]:
    """A node on 127.0.0.1, port 0, stopped gracefully on exit."""
    store = url if isinstance(url, Store) else await trio.to_thread.run_sync(open_store, url)
    node_id = settings.pop("node_id", "test-node")
    node = Node(
        Settings(host="127.0.0.1", port=0, node_id=node_id, **settings),
        store,
        broker or MemoryBroker(node_id),
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            try:
                yield node
            finally:
                node.stop()
    finally:
        if not isinstance(url, Store):
            store.close()


@asynccontextmanager
async def client(node: Node) -> AsyncIterator[ChatClient]:
    async with connect("127.0.0.1", node.ports[0]) as c:
        yield c


async def register(c: ChatClient, name: str, password: str = "secret") -> int:
    reply = await c.call("register", name=name, password=password)
    return int(reply["user"]["id"])


async def login(c: ChatClient, name: str, password: str = "secret") -> dict[str, Any]:
    return await c.call("login", name=name, password=password)


async def next_is_sentinel(recipient: ChatClient, recipient_id: int, sender: ChatClient) -> None:
    """Assert that nothing more is on its way to ``recipient``: ``sender`` sends it one
    more message, the sentinel, and the very next event ``recipient`` gets must be it.

    Let ``sender`` be the user whose messages (or whose request's side effects) are
    checked: one sender's messages reach one recipient in the order sent, so a
    duplicate, a copy that should not exist or a kept event would arrive before the
    sentinel. Unlike a quiet window, this holds however slow the machine is."""
    sent = await sender.call("send", to=recipient_id, text="sentinel")
    event = await recipient.next_event()
    assert (event["type"], event.get("message_id")) == ("message", sent["message_id"]), event
    assert event["offline"] is False, event


def drained(c: ChatClient) -> list[dict[str, Any]]:
    """The events a client has received and not yet read."""
    events = []
    while True:
        try:
            events.append(c.events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


async def no_event(c: ChatClient, wait: float = 0.3) -> None:
    """Assert that no event arrives within ``wait`` seconds.

    A quiet window proves little (a late event arrives after it): use
    ``next_is_sentinel`` wherever someone can send the client one more message, and
    this only where nothing may be sent (say why at the call)."""
    with trio.move_on_after(wait):
        event = await c.events.receive()
        raise AssertionError(f"unexpected event {event}")


class RawClient:
    """Bytes in, JSON lines out: for input no well-behaved client would send.

    TCP keeps no message boundaries: one read may hold part of a line or several
    lines, so replies are read up to a full line, never as one ``receive_some``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self, within: float = 10) -> dict[str, Any]:
        with trio.fail_after(within):
            while b"\n" not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError(f"closed; unread {self.buffer!r}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        value: dict[str, Any] = json.loads(line)
        return value

    async def closed(self, within: float = 10) -> bool:
        """True once the server closes the connection (after any pending lines)."""
        with trio.fail_after(within):
            while True:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return True
                if not chunk:
                    return True
                self.buffer += chunk


async def raw(node: Node) -> RawClient:
    return RawClient(await trio.open_tcp_stream("127.0.0.1", node.ports[0]))


# --- chat-server processes -------------------------------------------------------

PROCESS_START_SECONDS = 30
_starts = itertools.count()


def free_port() -> int:
    """A port that was free a moment ago. Someone may take it before it is used: prefer
    port 0 where the listener reports its port, else retry on "address already in use"
    (as ``server_process`` does)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chat_env(**extra: str) -> dict[str, str]:
    """This environment without any CHAT_* setting of the developer's, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHAT_")}
    env.update(extra)
    return env


class ServerProcess:
    def __init__(self, process: trio.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    async def stop(self, signum: signal.Signals = signal.SIGTERM, within: float = 10) -> int:
        """Send ``signum`` and return the exit status."""
        self.process.send_signal(signum)
        with trio.fail_after(within):
            return await self.process.wait()


PORT_ATTEMPTS = 5
"""How many free ports ``server_process`` tries when the one it chose was taken meanwhile."""


class PortTaken(RuntimeError):
    """The process could not bind a port it was given."""


@asynccontextmanager
async def server_process(
    directory: Path,
    *args: str,
    port: int | None = None,
    name: str = "server",
    env: dict[str, str] | None = None,
    ready_text: str | None = None,
) -> AsyncIterator[ServerProcess]:
    """``python -m chat serve --port PORT ARGS`` in ``directory``, ready once it logs that it
    listens on its port (or ``ready_text``); killed on exit if the test did not stop it.

    Without ``port`` it takes a free one, and another if that was taken before the
    process could bind it (``free_port`` cannot reserve it)."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            running = await _start_server(
                directory, args, port or free_port(), name, env, ready_text
            )
            break
        except PortTaken:
            if port is not None or attempt == PORT_ATTEMPTS:
                raise
    try:
        yield running
    finally:
        await _reap(running.process)


async def _start_server(
    directory: Path,
    args: tuple[str, ...],
    port: int,
    name: str,
    env: dict[str, str] | None,
    ready_text: str | None,
) -> ServerProcess:
    log = directory / f"{name}-{port}-{next(_starts)}.log"
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "chat", "serve", "--port", str(port), *args],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or chat_env(),
        )
    running = ServerProcess(process, port, log)
    try:
        await _wait_ready(running, ready_text or f"port {port}", name)
    except BaseException:
        await _reap(process)
        raise
    return running


async def _wait_ready(running: ServerProcess, ready_text: str, name: str) -> None:
    with trio.fail_after(PROCESS_START_SECONDS):
        while ready_text not in running.output():
            if running.process.returncode is not None:
                if "address already in use" in running.output().lower():
                    raise PortTaken(f"{name}: a port was taken: {running.log_tail()}")
                raise RuntimeError(f"{name} exited: {running.log_tail()}")
            await trio.sleep(0.05)


async def _reap(process: trio.Process) -> None:
    """Kill ``process`` unless it has exited, and wait for it."""
    if process.returncode is None:
        process.kill()
    with trio.move_on_after(10, shield=True):
        await process.wait()


# --- protocol 1.2: devices ----------------------------------------------------------------

EVENT_DEADLINE = 10.0


async def on(c: ChatClient, name: str, device: str | None = None, **extra: Any) -> dict[str, Any]:
    """Log in as ``name`` on ``device`` (None: a version 1 login, the device "")."""
    fields: dict[str, Any] = {"name": name, "password": "secret", **extra}
    if device is not None:
        fields["device"] = device
    return await c.call("login", **fields)


async def next_of(c: ChatClient, kind: str) -> dict[str, Any]:
    """The next event that is not a presence event; it must be of type ``kind``."""
    while True:
        event = await c.next_event(EVENT_DEADLINE)
        if event["type"] != "presence":
            assert event["type"] == kind, event
            return event
