"""A small async client for protocol v1 over TCP or WebSocket.

Used by chat-cli, chat-bench and tests.

Replies arrive in request order, so each request waits on the next reply slot;
everything without ``rid``-style reply type (``ok``/``error``) is an event and
goes to ``events``.
"""

from __future__ import annotations

import json
import math
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from chat.protocol import LineSplitter

CLIENT_MAX_FRAME = 1024 * 1024


class ChatError(Exception):
    """The server answered ``error``."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.reply = reply
        self.code: str = str(reply.get("code"))
        self.message: str = str(reply.get("message"))


class ConnectionLost(Exception):
    """The connection closed while a reply was awaited."""


class _Slot:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: dict[str, Any] | None = None


class ChatClient:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._send_lock = trio.Lock()
        self._slots: deque[_Slot] = deque()
        self._events_in, self.events = trio.open_memory_channel[dict[str, Any]](math.inf)
        self.closed = trio.Event()

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a request and return its reply, ``ok`` or ``error``."""
        slot = _Slot()
        payload = json.dumps({"type": kind, **fields}, ensure_ascii=False).encode() + b"\n"
        async with self._send_lock:
            if self.closed.is_set():
                raise ConnectionLost("connection closed")
            self._slots.append(slot)
            await self._stream.send_all(payload)
        await slot.done.wait()
        if slot.reply is None:
            raise ConnectionLost("connection closed before the reply")
        return slot.reply

    async def call(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Like ``request``, but an ``error`` reply raises ``ChatError``."""
        reply = await self.request(kind, **fields)
        if reply.get("type") == "error":
            raise ChatError(reply)
        return reply

    async def send_raw(self, data: bytes, *, replies: int = 0) -> list[dict[str, Any]]:
        """Write bytes as they are; wait for ``replies`` replies and return them."""
        slots = [_Slot() for _ in range(replies)]
        async with self._send_lock:
            self._slots.extend(slots)
            await self._stream.send_all(data)
        out = []
        for slot in slots:
            await slot.done.wait()
            if slot.reply is None:
                raise ConnectionLost("connection closed before the reply")
            out.append(slot.reply)
        return out

    async def next_event(self, within: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(within):
            return await self.events.receive()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def _read(self) -> None:
        splitter = LineSplitter(CLIENT_MAX_FRAME)
        try:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    break
                for line in splitter.feed(data):
                    self._dispatch(json.loads(line))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            while self._slots:
                self._slots.popleft().done.set()
            self._events_in.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") in ("ok", "error") and self._slots:
            slot = self._slots.popleft()
            slot.reply = message
            slot.done.set()
        else:
            self._events_in.send_nowait(message)


@asynccontextmanager
async def client_over(stream: trio.abc.Stream) -> AsyncIterator[ChatClient]:
    """A client on an open stream; its reader task lives as long as the ``async with``."""
    client = ChatClient(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._read)
        try:
            yield client
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


def tls_context(ca_file: str | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and name: against
    ``ca_file`` (PEM) if given, else the system's certificate store. ``insecure``:
    no verification at all (anyone in the middle can read and change everything)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def open_stream(
    host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """A TCP stream, with TLS over it (handshake done, so a refused certificate
    raises here: ``trio.BrokenResourceError`` from an ``ssl.SSLCertVerificationError``)
    when ``ssl_context`` is given."""
    tcp = await trio.open_tcp_stream(host, port)
    if ssl_context is None:
        return tcp
    stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return stream


@asynccontextmanager
async def connect(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[ChatClient]:
    """Open a client over TCP; over TLS with ``ssl_context`` (``tls_context()``)."""
    async with client_over(await open_stream(host, port, ssl_context)) as client:
        yield client


class WebSocketLines(trio.abc.Stream):
    """Lets ``ChatClient`` speak over WebSocket: each line it writes becomes one
    text message, and each message it reads comes back as one line."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._pending = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        for line in bytes(data).split(b"\n"):
            if line:
                try:
                    await self._ws.send_message(line.decode())
                except ConnectionClosed as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending:
            try:
                message = await self._ws.get_message()
            except ConnectionClosed:
                return b""
            data = message.encode() if isinstance(message, str) else bytes(message)
            self._pending = data + b"\n"
        size = max_bytes or len(self._pending)
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk

    async def aclose(self) -> None:
        await self._ws.aclose()


WS_CONNECT_TIMEOUT = 10.0
WS_CLOSE_TIMEOUT = 3.0


@asynccontextmanager
async def connect_websocket(
    url: str, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[ChatClient]:
    """Like ``connect``, over WebSocket (``ws://host:port/path``, or ``wss://`` with
    ``ssl_context``; without one, ``wss://`` verifies against the system store).

    Failing to connect raises ``trio_websocket.HandshakeError`` (its ``__cause__``
    is the ``OSError``, if any); a malformed URL raises ``ValueError``.
    """
    async with (
        open_websocket_url(
            url,
            ssl_context=ssl_context,
            max_message_size=CLIENT_MAX_FRAME,
            connect_timeout=WS_CONNECT_TIMEOUT,
            disconnect_timeout=WS_CLOSE_TIMEOUT,
        ) as ws,
        client_over(WebSocketLines(ws)) as client,
    ):
        yield client
