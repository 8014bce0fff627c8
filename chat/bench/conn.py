"""A lean protocol client for load generation.

``chat.client.ChatClient`` is built for tests and the terminal (a slot and an
event per request, an unbounded event channel). A load process holds thousands
of connections and pipelines requests, so this one keeps a FIFO of reply
callbacks and hands events to one synchronous callback: the cost per message on
the generator side stays small and the generator is not what gets measured.
"""

from __future__ import annotations

import json
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from chat.client import open_stream
from chat.protocol import LineSplitter

READ_CHUNK = 65_536
MAX_FRAME = 1024 * 1024

Json = dict[str, Any]
ReplyCallback = Callable[[Json], None]
EventCallback = Callable[[Json], None]

EVENT_ERRORS = frozenset({"ack_timeout", "login_timeout"})
"""Errors the server sends as events (no ``rid``, never a reply): ``ack_timeout``,
``login_timeout``, just before it closes the connection."""
LOST: Json = {"type": "error", "code": "bench_connection_lost", "message": "connection closed"}
"""What a reply callback gets when the connection closes before its reply (not a server code)."""


class ConnectionLost(Exception):
    """The server closed the connection while a reply was awaited."""


class BenchConnection:
    """One TCP connection; replies come back in request order (the protocol says so)."""

    def __init__(self, stream: trio.abc.Stream, on_event: EventCallback) -> None:
        self._stream = stream
        self._on_event = on_event
        self._replies: deque[ReplyCallback] = deque()
        self._send_lock = trio.StrictFIFOLock()
        self._reading: trio.Event | None = None
        """Set while reading is paused (``pause_reading``): the reader waits for it."""
        self.closed = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        nursery: trio.Nursery,
        on_event: EventCallback,
        ssl_context: ssl.SSLContext | None = None,
    ) -> BenchConnection:
        """Connect (with TLS when ``ssl_context`` is given: the handshake is done here)."""
        stream = await open_stream(host, port, ssl_context)
        conn = cls(stream, on_event)
        nursery.start_soon(conn._read)
        return conn

    def set_event_handler(self, on_event: EventCallback) -> None:
        self._on_event = on_event

    async def request(self, kind: str, callback: ReplyCallback, **fields: Any) -> None:
        """Send a request without waiting: ``callback`` gets its reply later."""
        payload = json.dumps({"type": kind, **fields}, ensure_ascii=False).encode() + b"\n"
        async with self._send_lock:
            if self.closed:
                raise ConnectionLost("connection closed")
            self._replies.append(callback)
            try:
                await self._stream.send_all(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionLost(str(exc)) from exc

    async def call(self, kind: str, **fields: Any) -> Json:
        """Send a request and wait for its reply (``ok`` or ``error``)."""
        done = trio.Event()
        box: list[Json] = []

        def got(reply: Json) -> None:
            box.append(reply)
            done.set()

        await self.request(kind, got, **fields)
        await done.wait()
        if box[0].get("code") == LOST["code"]:
            raise ConnectionLost(f"connection closed before the reply to {kind}")
        return box[0]

    def pause_reading(self) -> None:
        """Stop reading from the socket (a client that stalls): what the server writes
        stays in the kernel's buffers, then in the server's. Lines already read are
        still handed out."""
        if self._reading is None:
            self._reading = trio.Event()

    def resume_reading(self) -> None:
        if self._reading is not None:
            self._reading.set()
            self._reading = None

    async def aclose(self) -> None:
        self.closed = True
        self.resume_reading()  # the reader then finds the stream closed
        with trio.move_on_after(1, shield=True):
            await self._stream.aclose()

    async def _read(self) -> None:
        splitter = LineSplitter(MAX_FRAME)
        try:
            while True:
                if self._reading is not None:
                    await self._reading.wait()
                data = await self._stream.receive_some(READ_CHUNK)
                if not data:
                    break
                for line in splitter.feed(data):
                    message = json.loads(line)
                    kind = message.get("type")
                    if kind == "error" and message.get("code") in EVENT_ERRORS:
                        self._on_event(message)
                    elif (kind == "ok" or kind == "error") and self._replies:
                        self._replies.popleft()(message)
                    else:
                        self._on_event(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed = True
            waiting, self._replies = self._replies, deque()
            for callback in waiting:
                callback(dict(LOST))
