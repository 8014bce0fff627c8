"""Protocol v1 over WebSocket: one JSON object per text message.

The adapter turns a trio-websocket connection into a ``MessageStream``, so a
session cannot tell it from TCP. The listener runs its own accept loop (like
``trio.serve_listeners``) and hands each TCP stream to trio-websocket with
``wrap_server_stream``: that keeps the raw socket in reach, for TCP keepalive,
for the peer's address and for cutting a dead connection at once.

Limits, each a keyword argument with a named default (trio-websocket's style):

- ``max_frame`` (``MAX_LINE_BYTES``): the protocol's limit, in UTF-8 bytes, the
  same as a TCP line. A longer message gets ``error`` ``frame_too_large`` and
  the connection is closed with code 1009, as TCP closes after that error.
- ``read_limit`` (``READ_LIMIT_FACTOR`` times ``max_frame``): trio-websocket's
  own ``max_message_size``, the most the library buffers for one message. It
  counts ``len()`` of the parts, code points for text, and a message of more
  than ``max_frame`` code points is more than ``max_frame`` bytes: so every
  message the protocol refuses up to this size gets the ``error`` reply. A
  message past it is cut off by the library itself (close code 1009 "Message
  Too Big", with no ``error`` before it: a close frame ends the conversation),
  which bounds the memory one connection can make the server hold.
- ``handshake_timeout``: from TCP accept to the end of the opening handshake.
- ``ping_interval`` / ``ping_timeout``: a ping every interval; a peer that does
  not answer within the timeout is disconnected, which frees its user for a
  login elsewhere. Browsers answer pings by themselves.
- ``close_timeout``: how long the closing handshake may take before the TCP
  connection is simply closed.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio
import trio_websocket
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from chat.protocol import MAX_LINE_BYTES, ErrorCode

from .base import FrameRejected, MessageStream, StreamClosed
from .tcp import enable_keepalive, peer_address, peer_name, send_counted, send_each

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
"""Seconds from TCP accept until the opening handshake must be done."""
PING_INTERVAL = 20.0
"""Seconds between keepalive pings."""
PING_TIMEOUT = 20.0
"""Seconds a peer has to answer a ping before it counts as gone."""
CLOSE_TIMEOUT = 3.0
"""Seconds the closing handshake may take."""
READ_LIMIT_FACTOR = 4
"""trio-websocket's ``max_message_size`` is this many times the protocol's limit."""
MESSAGE_QUEUE_SIZE = 1
"""Messages trio-websocket reads ahead of the session; 1 keeps backpressure on the peer.
(While it is full, pongs wait too; the session never stalls its reading for long.)"""

CLOSE_NORMAL = 1000
CLOSE_MESSAGE_TOO_BIG = 1009

ConnectionHandler = Callable[[MessageStream], Awaitable[None]]


class WebSocketStream:
    """A ``MessageStream`` over one accepted WebSocket connection.

    ``receive`` returns each text message as UTF-8 bytes; a binary message is
    ``bad_frame`` (the connection stays open) and one over ``max_frame`` bytes
    is ``frame_too_large`` (fatal). ``send`` writes each frame as one text
    message.
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        socket_stream: trio.abc.Stream,
        peer: str,
        *,
        max_frame: int = MAX_LINE_BYTES,
        close_timeout: float = CLOSE_TIMEOUT,
        address: str = "",
    ) -> None:
        self._ws = ws
        self._socket_stream = socket_stream
        self.peer = peer
        self.address = address
        self._max_frame = max_frame
        self._close_timeout = close_timeout
        self._close_code = CLOSE_NORMAL
        self._close_reason: str | None = None
        self.frames_sent = 0

    async def receive(self) -> bytes:
        try:
            message = await self._ws.get_message()
        except ConnectionClosed as exc:
            raise StreamClosed(_describe(exc.reason)) from exc
        frame = message.encode() if isinstance(message, str) else message
        if len(frame) > self._max_frame:
            self._close_code = CLOSE_MESSAGE_TOO_BIG
            self._close_reason = f"a message is longer than {self._max_frame} bytes"
            raise FrameRejected(ErrorCode.FRAME_TOO_LARGE, self._close_reason, fatal=True)
        if isinstance(message, bytes):
            raise FrameRejected(
                ErrorCode.BAD_FRAME,
                "binary messages are not accepted: send each JSON object as a text message",
                fatal=False,
            )
        return frame

    def frames_waiting(self) -> bool:
        """Messages trio-websocket has read and not handed out yet (its own channel:
        looked at, never touched; False if that is not there in this version)."""
        received = getattr(self._ws, "_recv_channel", None)
        statistics = getattr(received, "statistics", None)
        return statistics is not None and statistics().current_buffer_used > 0

    async def send(self, frames: Sequence[bytes]) -> None:
        """All frames in one write, as text messages built from the UTF-8 bytes the codec
        made (trio-websocket would take a ``str`` per message, encode it again, and
        write each alone). The write holds trio-websocket's own lock, so it never
        interleaves with the library's pings, pongs or closing frame."""
        lock = getattr(self._ws, "_stream_lock", None)
        stream = self._socket_stream
        if lock is None:
            await self._send_one_by_one(frames)  # not the library version we know
            return
        parts: list[bytes] = []
        ends: list[int] = []
        end = 0
        for frame in frames:
            header = _text_frame_header(len(frame))
            parts += (header, frame)
            end += len(header) + len(frame)
            ends.append(end)
        async with lock:
            if self._ws.closed is not None:
                raise StreamClosed(_describe(self._ws.closed))
            if not isinstance(stream, trio.SocketStream):  # TLS: a write per frame
                whole = [b"".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
                await send_each(stream, whole, self)
                return
            try:
                await send_counted(stream.socket, b"".join(parts), ends, self)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise StreamClosed(str(exc)) from exc

    async def _send_one_by_one(self, frames: Sequence[bytes]) -> None:
        try:
            for frame in frames:
                await self._ws.send_message(frame.decode())
                self.frames_sent += 1
        except ConnectionClosed as exc:
            raise StreamClosed(_describe(exc.reason)) from exc

    async def aclose(self) -> None:
        """Close with a closing handshake; if the peer does not answer within
        ``close_timeout``, trio-websocket closes the TCP connection itself."""
        with trio.move_on_after(self._close_timeout):
            await self._ws.aclose(self._close_code, self._close_reason)
        await trio.aclose_forcefully(self._socket_stream)  # TLS: no close_notify to wait on

    async def keep_alive(self, interval: float, pong_within: float) -> None:
        """Ping every ``interval``; cut the connection if no pong comes ``pong_within``.

        Cutting the TCP stream ends trio-websocket's reader, which makes the
        session's ``receive`` raise ``StreamClosed``: the session then ends as
        if the peer had left.
        """
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(pong_within) as waiting:
                try:
                    await self._ws.ping()
                except ConnectionClosed:
                    return
            if waiting.cancelled_caught:
                log.info(
                    "%s did not answer a ping within %.0f s: disconnecting", self.peer, pong_within
                )
                await trio.aclose_forcefully(self._socket_stream)
                return


async def serve_websocket(
    handler: ConnectionHandler,
    listeners: list[trio.SocketListener],
    *,
    handler_nursery: trio.Nursery | None = None,
    max_frame: int = MAX_LINE_BYTES,
    read_limit: int | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ping_interval: float = PING_INTERVAL,
    ping_timeout: float = PING_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket connections on ``listeners`` and run ``handler`` for each.

    Like ``trio.serve_listeners``: each connection is a task in
    ``handler_nursery`` (so the caller's shutdown deadline covers it), the
    listeners close when this is cancelled, and ``task_status.started`` is
    called once they are accepting. ``handler`` gets a ``WebSocketStream`` after
    a successful handshake; the connection is closed when it returns.
    """
    connection = partial(
        _serve_connection,
        handler,
        max_frame=max_frame,
        read_limit=read_limit if read_limit is not None else READ_LIMIT_FACTOR * max_frame,
        handshake_timeout=handshake_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        close_timeout=close_timeout,
    )
    try:
        await trio.serve_listeners(
            connection, listeners, handler_nursery=handler_nursery, task_status=task_status
        )
    finally:
        for listener in listeners:
            await listener.aclose()


async def _serve_connection(
    handler: ConnectionHandler,
    stream: trio.SocketStream,
    *,
    max_frame: int,
    read_limit: int,
    handshake_timeout: float,
    ping_interval: float,
    ping_timeout: float,
    close_timeout: float,
) -> None:
    try:
        enable_keepalive(stream)
        peer = "ws " + peer_name(stream)
        address = peer_address(stream)
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.EINVAL, errno.ECONNRESET):
            log.exception("cannot set up a WebSocket connection")
        await stream.aclose()
        return
    await serve_websocket_stream(
        handler,
        stream,
        peer,
        address=address,
        max_frame=max_frame,
        read_limit=read_limit,
        handshake_timeout=handshake_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        close_timeout=close_timeout,
    )


async def serve_websocket_stream(
    handler: ConnectionHandler,
    stream: trio.abc.Stream,
    peer: str,
    *,
    address: str = "",
    max_frame: int = MAX_LINE_BYTES,
    read_limit: int | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ping_interval: float = PING_INTERVAL,
    ping_timeout: float = PING_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
) -> None:
    """One connection already set up (a TCP stream, or the TLS stream over it): the
    opening handshake, then ``handler`` with a ``WebSocketStream``; ``stream`` is
    closed at the end whatever happens."""
    if read_limit is None:
        read_limit = READ_LIMIT_FACTOR * max_frame
    try:
        async with trio.open_nursery() as nursery:
            ws = None
            with trio.move_on_after(handshake_timeout) as handshaking:
                ws = await _handshake(nursery, stream, read_limit)
            if ws is None:
                if handshaking.cancelled_caught:
                    log.info("%s: no WebSocket handshake within %.0f s", peer, handshake_timeout)
                nursery.cancel_scope.cancel()  # trio-websocket's reader task
                return
            adapter = WebSocketStream(
                ws, stream, peer, max_frame=max_frame, close_timeout=close_timeout, address=address
            )
            nursery.start_soon(adapter.keep_alive, ping_interval, ping_timeout)
            try:
                await handler(adapter)
            finally:
                with trio.move_on_after(close_timeout, shield=True):
                    await adapter.aclose()
                nursery.cancel_scope.cancel()
    except Exception:
        # One broken connection (or a library bug) must never end the node.
        log.exception("%s: WebSocket connection failed", peer)
    finally:
        await trio.aclose_forcefully(stream)


async def _handshake(
    nursery: trio.Nursery, stream: trio.abc.Stream, read_limit: int
) -> WebSocketConnection | None:
    """The opening handshake; ``None`` if the peer left during it.

    The caller bounds it with the handshake timeout. A request that is not a
    WebSocket upgrade is answered 400 by wsproto and then simply waits here for
    that timeout, with its TCP stream already closed.
    """
    try:
        request = await trio_websocket.wrap_server_stream(
            nursery,
            stream,
            message_queue_size=MESSAGE_QUEUE_SIZE,
            max_message_size=read_limit,
        )
        return await request.accept()
    except ConnectionClosed:
        return None


def _text_frame_header(length: int) -> bytes:
    """RFC 6455 §5.2: a final text frame from the server (unmasked), no extensions
    (trio-websocket negotiates none)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


def _describe(reason: CloseReason | None) -> str:
    if reason is None:
        return "connection closed"
    detail = f": {reason.reason}" if reason.reason else ""
    return f"closed with code {reason.code} ({reason.name}){detail}"
