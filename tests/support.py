"""Shared test plumbing: real databases, real nodes on port 0, real TCP clients.

Testing rules: everything listens on 127.0.0.1 with port 0; every MariaDB test
gets a database of its own, created here and dropped afterwards; the suite
talks to real MariaDB (``CHAT_TEST_MYSQL``, default root on 127.0.0.1:3306).
"""

from __future__ import annotations

import itertools
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


async def no_event(c: ChatClient, wait: float = 0.3) -> None:
    """Assert that no event arrives within ``wait`` seconds."""
    with trio.move_on_after(wait):
        event = await c.events.receive()
        raise AssertionError(f"unexpected event {event}")


# --- chat-server processes -------------------------------------------------------

PROCESS_START_SECONDS = 30
_starts = itertools.count()


def free_port() -> int:
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
    listens on its port (or ``ready_text``); killed on exit if the test did not stop it."""
    port = port or free_port()
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
        with trio.fail_after(PROCESS_START_SECONDS):
            while (ready_text or f"port {port}") not in running.output():
                if process.returncode is not None:
                    raise RuntimeError(f"{name} exited: {running.log_tail()}")
                await trio.sleep(0.05)
        yield running
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(10, shield=True):
            await process.wait()
