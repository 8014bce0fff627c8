"""A chat node: listeners, sessions and the broker bridge, under one nursery.

Task tree::

    Node.run
    ├── broker.run            (notices from other nodes -> Router.on_notice;
    │                          presence changes -> PresenceAnnouncer.changed)
    ├── presence.run          (presence changes -> the friends' events, in batches)
    ├── positions.run         (devices' positions, stored in batches)
    ├── relay.run             (wake-ups and events for other nodes, in batches)
    ├── watchdog              (ends connections whose write is overdue, or that
    │                          did not log in within the login timeout)
    ├── health                (probes the database and Redis: /readyz, *_up gauges)
    ├── HTTP endpoint         (with ``http_port``: /metrics, /healthz, /readyz)
    └── connections nursery
        ├── accept loop       (trio.serve_listeners; cancelled first on shutdown)
        ├── WebSocket accept loop (with ``ws_port``; cancelled with the other)
        ├── legacy accept loop (with ``legacy_port``: the original's clients)
        └── Session.run ...   (one per connection, each with its own writer
                               and delivery tasks)

Ready before listening: the ports are bound only once the node can serve (its
database is migrated before ``Node`` exists; the broker has subscribed and
checked its leases), so a load balancer or client never reaches a node that
accepts connections and then does not answer them.

Shutdown (``stop()``, called on SIGINT/SIGTERM): stop accepting, ask every
session to finish (flush its queue, release its user's presence, close), give
them ``shutdown_grace_seconds``, announce their users' departure and send the
wake-ups still queued for other nodes, then stop the broker.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections import Counter
from contextlib import suppress
from functools import partial
from typing import Literal

import attrs
import trio

from chat.broker import Broker, Notice, PresenceChange
from chat.protocol import V1, Codec, ErrorCode
from chat.protocol.legacy import LegacyCodec
from chat.protocol.messages import Error
from chat.store import Store
from chat.transports import (
    LineStream,
    MessageStream,
    StreamClosed,
    WebSocketStream,
    enable_keepalive,
    serve_websocket_stream,
)
from chat.transports.legacy import LegacyStream
from chat.transports.proxy import HEADER_TIMEOUT as PROXY_HEADER_TIMEOUT
from chat.transports.proxy import ProxiedPeer, ProxyHeaderError, read_proxy_header
from chat.transports.tcp import format_peer, peer_address, peer_name
from chat.transports.tls import Certificates, Prefixed
from chat.transports.tls import handshake as tls_handshake

from .connection import gathered_writes
from .fanout import FanoutBudget
from .health import Health
from .http import HttpEndpoint
from .listeners import bound_ports, open_listeners
from .metrics import StateCollector
from .passwords import PasswordHasher
from .positions import Positions
from .presence import PresenceAnnouncer
from .router import Router
from .services import Services
from .session import Session
from .settings import Settings

log = logging.getLogger(__name__)


@attrs.frozen
class Listener:
    """One kind of listening port: what the pipeline does with its connections."""

    kind: Literal["tcp", "websocket", "legacy"]
    port: int
    tls: bool


class Node:
    def __init__(self, settings: Settings, store: Store, broker: Broker) -> None:
        self.settings = settings
        self.router = Router(broker)
        self.services = Services(
            settings=settings,
            store=store,
            broker=broker,
            router=self.router,
            hasher=PasswordHasher(settings.hash_concurrency, settings.hash_queue),
            positions=Positions(store),
            fanout=FanoutBudget(settings.fanout_rate, settings.fanout_burst),
        )
        store.pool.timeout = settings.db_timeout_seconds
        metrics = self.services.metrics
        store.observe_batches(metrics.store_batch)
        store.gather_hand_offs = gathered_writes
        self.health = Health(store, getattr(broker, "ping", None), lambda: self.router.paused)
        metrics.add_collector(
            StateCollector(
                connections=lambda: dict(self._open),
                users_online=lambda: len(self.router.sessions()),
                database_up=lambda: self.health.database_up,
                redis_up=lambda: self.health.redis_up,
                notices=lambda: (
                    getattr(broker, "notices_sent", 0),
                    getattr(broker, "notices_received", 0),
                ),
                store_timeouts=lambda: store.pool.timeouts,
                store_retries=lambda: (store.pool.retries, store.pool.gave_up),
                leases_recreated=lambda: getattr(broker, "leases_recreated", None),
            )
        )
        self._open: Counter[str] = Counter({"tcp": 0, "websocket": 0, "legacy": 0})
        """Open connections by transport (the ``chat_connections`` gauge)."""
        self.presence = PresenceAnnouncer(store, self.router)
        self._serials = itertools.count(1)
        self._sessions: set[Session] = set()
        self._stop = trio.Event()
        self.ports: list[int] = []
        """The TCP ports actually listened on (useful with port 0)."""
        self.ws_ports: list[int] = []
        """The WebSocket ports actually listened on; empty when WebSocket is off."""
        self.legacy_ports: list[int] = []
        """The legacy protocol's ports actually listened on; empty when it is off."""
        self.http_ports: list[int] = []
        """The HTTP (metrics, health) ports actually listened on; empty when off."""
        self.certificates = (
            Certificates(settings.tls_cert, settings.tls_key)
            if settings.tls_cert is not None and settings.tls_key is not None
            else None
        )
        """The TLS certificate of the TCP and WebSocket listeners; None: plain text."""

    def stop(self) -> None:
        """Begin a graceful shutdown; ``run`` returns once it is done."""
        self.health.stopping = True  # /readyz says so at once
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self.settings
        async with trio.open_nursery() as services:
            await services.start(self.presence.run)
            await services.start(self.services.broker.run, self._on_notice)
            await services.start(self.services.positions.run)
            await services.start(self.router.relay.run)
            services.start_soon(self._watch_writes)
            await services.start(self.health.run)
            await self._start_http(services)
            opened = await self._open_listeners()
            async with trio.open_nursery() as connections:
                accepting = [trio.CancelScope() for _ in opened]
                for (listener, sockets), scope in zip(opened, accepting, strict=True):
                    connections.start_soon(self._accept, listener, sockets, connections, scope)
                    if listener.kind != "tcp":
                        log.info(
                            "node %s: %s on port %s",
                            settings.node_id,
                            "WebSocket" if listener.kind == "websocket" else "legacy protocol",
                            bound_ports(sockets),
                        )
                log.info(
                    "node %s listening on %s port %s%s (%s)",
                    settings.node_id,
                    settings.host,
                    ",".join(map(str, self.ports)),
                    " with TLS" if self.certificates is not None else "",
                    self.services.store.dialect.describe(),
                )
                task_status.started(self)
                await self._stop.wait()
                log.info("node %s stopping: %d connections", settings.node_id, len(self._sessions))
                for scope in accepting:
                    scope.cancel()
                for session in list(self._sessions):
                    session.request_close()
                connections.cancel_scope.deadline = (
                    trio.current_time() + settings.shutdown_grace_seconds
                )
            # Friends should hear that this node's users left; stored messages whose
            # recipients are on other nodes: wake them before leaving.
            with trio.move_on_after(settings.close_grace_seconds, shield=True):
                await self.presence.drain()
                await self.router.relay.drain()
            services.cancel_scope.cancel()
        log.info("node %s stopped", settings.node_id)

    async def _start_http(self, nursery: trio.Nursery) -> None:
        """The metrics and health endpoint, bound before the chat ports: an orchestrator
        can watch a node start."""
        settings = self.settings
        if settings.http_port is None:
            return
        listeners = await open_listeners(settings.http_port, settings.http_host or settings.host)
        self.http_ports = bound_ports(listeners)
        endpoint = HttpEndpoint(self.services.metrics.render, self.health.problems)
        await nursery.start(partial(endpoint.serve, listeners))
        log.info("node %s: metrics and health on HTTP port %s", settings.node_id, self.http_ports)

    async def _refuse(
        self,
        stream: MessageStream,
        reason: str,
        message: str,
        code: ErrorCode = ErrorCode.UNAVAILABLE,
        codec: Codec = V1,
    ) -> None:
        """One ``error`` line (if ``codec`` has one) and close: cheaper than a session."""
        self.services.metrics.connections_refused.labels(reason).inc()
        log.warning("refusing %s: %s", stream.peer, message)
        refusal = codec.encode_reply(Error(None, code, message))
        with trio.move_on_after(self.settings.close_grace_seconds), suppress(StreamClosed):
            await stream.send([refusal])
        with trio.move_on_after(self.settings.close_grace_seconds, shield=True):
            await stream.aclose()

    def _on_notice(self, notice: Notice) -> None:
        """The broker's handler (in the trio thread): presence changes to announce go
        to the announcer, everything else to the router."""
        if isinstance(notice, PresenceChange):
            self.presence.changed(notice)
        else:
            self.router.on_notice(notice)

    async def _watch_writes(self) -> None:
        """Abort every connection whose write has been under way longer than
        ``slow_client_seconds``, and close those that have not logged in within
        ``login_timeout_seconds``: one look at each connection a fraction of those
        periods, instead of a timer around every write and a task per connection."""
        settings = self.settings
        periods = [settings.slow_client_seconds, settings.login_timeout_seconds or float("inf")]
        period = min(periods) / 4
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for session in list(self._sessions):
                if session.connection.overdue(now):
                    session.connection.abort("a write did not finish in time (client not reading)")
                elif session.login_overdue(now):
                    session.expire_login()

    def _listener_plan(self) -> list[Listener]:
        """What to listen on, from the settings: TCP always, WebSocket and legacy if
        asked for; TLS on all but legacy when there is a certificate."""
        settings, tls = self.settings, self.certificates is not None
        plan = [Listener("tcp", settings.port, tls)]
        if settings.ws_port is not None:
            plan.append(Listener("websocket", settings.ws_port, tls))
        if settings.legacy_port is not None:
            plan.append(Listener("legacy", settings.legacy_port, False))
        return plan

    async def _open_listeners(self) -> list[tuple[Listener, list[trio.SocketListener]]]:
        """Bind every port before anything runs, so a taken port is a plain OSError
        (and the ports bound before it are closed again)."""
        settings = self.settings
        opened: list[tuple[Listener, list[trio.SocketListener]]] = []
        try:
            for listener in self._listener_plan():
                sockets = await open_listeners(
                    listener.port, settings.host, reuse_port=settings.reuse_port
                )
                opened.append((listener, sockets))
        except OSError:
            for _, sockets in opened:
                for socket_listener in sockets:
                    await socket_listener.aclose()
            raise
        for listener, sockets in opened:
            ports = bound_ports(sockets)
            if listener.kind == "tcp":
                self.ports = ports
            elif listener.kind == "websocket":
                self.ws_ports = ports
            else:
                self.legacy_ports = ports
        return opened

    async def _accept(
        self,
        listener: Listener,
        sockets: list[trio.SocketListener],
        connections: trio.Nursery,
        scope: trio.CancelScope,
    ) -> None:
        with scope:
            try:
                await trio.serve_listeners(
                    partial(self._serve_connection, listener), sockets, handler_nursery=connections
                )
            finally:
                for socket_listener in sockets:
                    await socket_listener.aclose()

    async def reload_certificates(self) -> bool:
        """Read the TLS certificate and key again (SIGHUP): new connections get them.
        False if there is no TLS, or the new files do not load (the old pair stays)."""
        if self.certificates is None:
            log.info("node %s: no TLS certificate to reload", self.settings.node_id)
            return False
        return await self.certificates.reload()

    async def _serve_connection(self, listener: Listener, stream: trio.SocketStream) -> None:
        """One accepted connection through the pipeline: the socket's set-up, the PROXY
        protocol header (``--proxy-protocol``; not on WebSocket, whose proxy speaks
        HTTP), the TLS handshake, then the listener's framing. The login timeout counts
        from the accept: the handshakes and the login together get that long (a
        handshake costs no more than a connection that never logs in)."""
        accepted = trio.current_time()
        try:
            enable_keepalive(stream)
            peer = peer_name(stream)
            address = peer_address(stream)
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.EINVAL, errno.ECONNRESET):
                log.exception("cannot set up a connection")
            await stream.aclose()
            return
        if listener.kind == "websocket":
            peer = "ws " + peer
        transport: trio.abc.Stream = stream
        rest = b""
        if self.settings.proxy_protocol and listener.kind != "websocket":
            proxied = await self._read_proxy_header(stream, peer)
            if proxied is None:
                return
            if proxied.host is not None and proxied.port is not None:
                peer, address = (
                    f"{format_peer(proxied.host, proxied.port)} via {peer}",
                    proxied.host,
                )
            rest = proxied.rest
        if listener.tls and self.certificates is not None:
            if rest:
                transport, rest = Prefixed(stream, rest), b""
            login_timeout = self.settings.login_timeout_seconds
            left = max(login_timeout - (trio.current_time() - accepted), 1e-3)
            secured = await tls_handshake(
                transport,
                self.certificates.context,
                left if login_timeout else 0,
                peer,
                socket_stream=stream,
            )
            if secured is None:
                self.services.metrics.connections_refused.labels("tls_handshake").inc()
                await stream.aclose()
                return
            transport = secured
        max_frame = self.settings.max_frame_bytes
        if listener.kind == "websocket":
            await serve_websocket_stream(
                partial(self.serve_stream, opened_at=accepted),
                transport,
                peer,
                address=address,
                max_frame=max_frame,
            )
        elif listener.kind == "legacy":
            await self.serve_stream(
                LegacyStream(transport, peer, max_frame, address=address, buffered=rest),
                LegacyCodec(peer),
                opened_at=accepted,
            )
        else:
            await self.serve_stream(
                LineStream(transport, peer, max_frame, address=address, buffered=rest),
                opened_at=accepted,
            )

    async def _read_proxy_header(self, stream: trio.SocketStream, peer: str) -> ProxiedPeer | None:
        """The PROXY protocol header (``--proxy-protocol``); None: there was none, and
        the connection got one ``error`` line and is closed."""
        problem = f"no PROXY protocol header within {PROXY_HEADER_TIMEOUT:g} s"
        with trio.move_on_after(PROXY_HEADER_TIMEOUT):
            try:
                return await read_proxy_header(stream)
            except ProxyHeaderError as exc:
                problem = str(exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                problem = f"connection lost ({exc})"
        line = LineStream(stream, peer, self.settings.max_frame_bytes)
        await self._refuse(
            line,
            "proxy_header",
            f"this port expects a PROXY protocol header: {problem}",
            code=ErrorCode.BAD_FRAME,
        )
        return None

    async def serve_stream(
        self, stream: MessageStream, codec: Codec = V1, *, opened_at: float | None = None
    ) -> None:
        """Run a session over any message stream (the TCP, WebSocket and legacy adapters
        call this), speaking ``codec``; ``opened_at``: when its connection was accepted
        (the login timeout counts from then; default now)."""
        limit = self.settings.max_connections
        if limit and len(self._sessions) >= limit:
            await self._refuse(
                stream, "max_connections", "this server is full; try again later", codec=codec
            )
            return
        session = Session(self.services, stream, next(self._serials), codec, opened_at=opened_at)
        transport = (
            "websocket"
            if isinstance(stream, WebSocketStream)
            else "legacy"
            if isinstance(stream, LegacyStream)
            else "tcp"
        )
        self._open[transport] += 1
        self._sessions.add(session)
        if self._stop.is_set():
            session.request_close()  # accepted (or handshaken) just as the node began stopping
        try:
            await session.run()
        finally:
            self._open[transport] -= 1
            self._sessions.discard(session)
