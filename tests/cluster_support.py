"""Cluster test plumbing: a private redis-server, chat-server processes, nginx.

Everything listens on 127.0.0.1, on ports found free by binding port 0. The
shared Redis on 6379 is never touched: each test module starts its own
redis-server (from infra/redis/redis.conf) and each test uses a Redis database
of its own on it. nginx runs from infra/nginx/nginx.conf with only its ports
changed.
"""

from __future__ import annotations

import itertools
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import trio
import trustme

from chat.broker.redis import RedisBroker
from chat.client import ChatClient, connect, tls_context
from chat.server import Node

from .support import ServerProcess, free_port, running_node, server_process

DEADLINE = 20.0
"""Generous: a loaded machine may be slow, and this only bounds a wait that polls."""

REPO = Path(__file__).resolve().parent.parent
LEASE_SECONDS = 3.0
"""Short leases keep the crash tests short; heartbeats come every second."""
START_SECONDS = 30.0
"""The longest a redis-server, nginx or chat-server process may take to be ready."""


class RedisServer:
    """A private redis-server, started from the shipped config, restartable on its port."""

    DATABASES = 64

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = itertools.count(0)

    def start(self) -> None:
        """Start (blocking) and wait until it answers."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                str(REPO / "infra/redis/redis.conf"),
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")),
                *("--databases", str(self.DATABASES), "--daemonize", "no"),
            ],
            stdin=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + START_SECONDS
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start: {self.log_tail()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop (blocking); it saves nothing, so it comes back empty."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    async def restart(self, down_seconds: float) -> None:
        await trio.to_thread.run_sync(self.stop)
        await trio.sleep(down_seconds)
        await trio.to_thread.run_sync(self.start)

    def new_url(self) -> str:
        """A Redis URL on a database no other test used."""
        database = next(self._databases)
        assert database < self.DATABASES, "more tests than Redis databases"
        return f"redis://127.0.0.1:{self.port}/{database}"

    def log_tail(self) -> str:
        return _tail(self.directory / "redis.log")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def make_broker(redis_url: str, node_id: str, *, prefix: str | None = None) -> RedisBroker:
    return RedisBroker(redis_url, node_id, lease_seconds=LEASE_SECONDS, prefix=prefix)


class Tally:
    """A growing list that tasks can wait on."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: int) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = trio.Event()

    async def reach(self, count: int) -> None:
        while len(self.items) < count:
            await self._changed.wait()


@asynccontextmanager
async def cluster_node(
    database_url: str, broker: RedisBroker, **settings: Any
) -> AsyncIterator[Node]:
    """An in-process node on the Redis broker; the broker is closed after the node stops."""
    try:
        async with running_node(
            database_url, broker=broker, node_id=broker.node_id, **settings
        ) as node:
            yield node
    finally:
        with trio.move_on_after(5, shield=True):
            await broker.aclose()


@asynccontextmanager
async def two_nodes(
    mysql_url: str, redis_url: str, **settings: Any
) -> AsyncIterator[tuple[Node, Node]]:
    """Two in-process nodes, ``node-a`` and ``node-b``, on one database and one Redis."""
    async with (
        cluster_node(mysql_url, make_broker(redis_url, "node-a"), **settings) as a,
        cluster_node(mysql_url, make_broker(redis_url, "node-b"), **settings) as b,
    ):
        yield a, b


async def receive(c: ChatClient, kind: str) -> dict[str, Any]:
    """The client's next event, which must be of type ``kind``."""
    event = await c.next_event(DEADLINE)
    assert event["type"] == kind, event
    return event


@asynccontextmanager
async def dial(port: int, *, tls: bool = False) -> AsyncIterator[ChatClient]:
    """A client on 127.0.0.1; ``tls``: through the test nginx's TLS (``NGINX_CA``)."""
    async with connect("127.0.0.1", port, ssl_context=nginx_tls_context() if tls else None) as c:
        yield c


# --- chat-server processes ---------------------------------------------------------


@asynccontextmanager
async def node_process(
    database_url: str, redis_url: str, node_id: str, directory: Path
) -> AsyncIterator[ServerProcess]:
    """A cluster node as a real ``python -m chat serve`` process on a free port."""
    async with server_process(
        directory,
        *("--host", "127.0.0.1", "--node-id", node_id),
        *("--database", database_url, "--redis", redis_url),
        *("--lease-seconds", str(LEASE_SECONDS), "--log-level", "DEBUG"),
        name=node_id,
    ) as node:
        yield node


# --- nginx ---------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        raise RuntimeError("nginx is not installed (scripts/test installs it)")
    return found


def render_nginx_conf(
    listen_port: int,
    node_ports: tuple[int, int],
    legacy: tuple[int, tuple[int, int]] | None = None,
) -> str:
    """infra/nginx/nginx.conf with the test's ports instead of 8000, 6000 and 6002
    (and with ``legacy``, (listen port, node ports) instead of 8001, 6001 and 6003)."""
    text = (REPO / "infra/nginx/nginx.conf").read_text()
    legacy_port, legacy_nodes = legacy or (free_port(), (free_port(), free_port()))
    for pattern, replacement in [
        (r"listen 8001\b", f"listen 127.0.0.1:{legacy_port}"),
        (r"server 127\.0\.0\.1:6001\b", f"server 127.0.0.1:{legacy_nodes[0]}"),
        (r"server 127\.0\.0\.1:6003\b", f"server 127.0.0.1:{legacy_nodes[1]}"),
        (r"listen 8000\b", f"listen 127.0.0.1:{listen_port}"),
        (r"server 127\.0\.0\.1:6000\b", f"server 127.0.0.1:{node_ports[0]}"),
        (r"server 127\.0\.0\.1:6002\b", f"server 127.0.0.1:{node_ports[1]}"),
        # The http server (page and /ws) is unused here: only move it off 8080 and 8443.
        (r"listen 8080\b", f"listen 127.0.0.1:{free_port()}"),
        (r"listen 8443 ssl\b", f"listen 127.0.0.1:{free_port()} ssl"),
    ]:
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"infra/nginx/nginx.conf: expected one {pattern!r}"
    # Any other server in the file (the browsers' http one) gets a free port too.
    return re.sub(r"listen 80\d\d\b", lambda _: f"listen 127.0.0.1:{free_port()}", text)


NGINX_CA = trustme.CA()
"""The authority of the certificate every test nginx has (``nginx_tls_context``)."""


def nginx_tls_context() -> ssl.SSLContext:
    """A client context that trusts the test nginx's certificate (127.0.0.1, localhost)."""
    context = tls_context()
    NGINX_CA.configure_trust(context)
    return context


def write_nginx_certificate(directory: Path) -> None:
    """tls/server.pem and tls/server.key beside the config, where the shipped config
    looks for them (scripts/cluster makes them with openssl)."""
    tls = directory / "tls"
    tls.mkdir(exist_ok=True)
    issued = NGINX_CA.issue_cert("127.0.0.1", "localhost")
    (tls / "server.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(tls / "server.key"))


@asynccontextmanager
async def run_nginx(text: str, directory: Path) -> AsyncIterator[None]:
    """nginx with the config ``text``, its prefix (pid file, logs) in ``directory``,
    with a certificate from ``NGINX_CA``; ready once its listening sockets are open,
    stopped on exit."""
    conf = directory / "nginx.conf"
    await trio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(write_nginx_certificate, directory)
    await trio.to_thread.run_sync(conf.write_text, text)
    process = await trio.lowlevel.open_process(
        [
            nginx_binary(),
            *("-c", str(conf), "-p", f"{directory}/"),
            *("-e", str(directory / "nginx-early.log"), "-g", "daemon off;"),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        # nginx writes its pid file once its listening socket is open.
        with trio.fail_after(START_SECONDS):
            while not (directory / "nginx.pid").exists():
                if process.returncode is not None:
                    raise RuntimeError(f"nginx exited: {_tail(directory / 'nginx-error.log')}")
                await trio.sleep(0.05)
        yield
    finally:
        # SIGTERM: a fast stop (SIGQUIT would wait for every proxied connection to end).
        with trio.move_on_after(10, shield=True):
            process.terminate()
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def nginx_proxy(
    node_ports: tuple[int, int],
    directory: Path,
    legacy: tuple[int, tuple[int, int]] | None = None,
) -> AsyncIterator[int]:
    """nginx's stream proxy in front of two nodes; yields the port clients connect to
    (``legacy``: also the original protocol's, (listen port, the nodes' ports))."""
    port = free_port()
    async with run_nginx(render_nginx_conf(port, node_ports, legacy), directory):
        yield port


# --- a freezable TCP proxy -------------------------------------------------------


class _Link:
    """One proxied connection."""

    def __init__(self, *, frozen: bool) -> None:
        self.frozen = frozen
        self.subscriber = False
        """The client sent SUBSCRIBE on it: a pub/sub connection."""


class FreezableProxy:
    """A TCP proxy to Redis whose connections a test can freeze.

    A frozen connection forwards nothing in either direction and is never closed:
    what a half-open connection (a host gone without a FIN, a NAT that forgot the
    flow) looks like to both ends. Nothing errors; everything stays silent.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blackhole = False
        """Freeze new connections as well (Redis is out of reach altogether)."""
        self._links: list[_Link] = []
        self._thawed = trio.Event()

    def url(self, redis_url: str) -> str:
        """The same Redis URL, through this proxy."""
        parts = urlsplit(redis_url)
        return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{self.port}"))

    def freeze(self, *, subscribers_only: bool = False) -> int:
        """Freeze the open connections (or only the pub/sub ones); how many froze."""
        chosen = [link for link in self._links if link.subscriber or not subscribers_only]
        for link in chosen:
            link.frozen = True
        return len(chosen)

    def cut(self) -> None:
        """Freeze every connection, open or still to come."""
        self.blackhole = True
        self.freeze()

    def thaw(self) -> None:
        """Forward everything again, what was held back first."""
        self.blackhole = False
        for link in self._links:
            link.frozen = False
        self._thawed.set()
        self._thawed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        link = _Link(frozen=self.blackhole)
        self._links.append(link)
        try:
            async with down:
                try:
                    up = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                except OSError:
                    return
                async with up, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, link, down, up, nursery.cancel_scope, True)
                    nursery.start_soon(self._pump, link, up, down, nursery.cancel_scope, False)
        finally:
            self._links.remove(link)

    async def _pump(
        self,
        link: _Link,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        done: trio.CancelScope,
        to_redis: bool,
    ) -> None:
        try:
            while data := await source.receive_some():
                if to_redis and b"SUBSCRIBE" in data:
                    link.subscriber = True
                while link.frozen:
                    await self._thawed.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            done.cancel()  # one side is gone: so is the connection


@asynccontextmanager
async def freezable_proxy(target_port: int) -> AsyncIterator[FreezableProxy]:
    proxy = FreezableProxy(target_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
