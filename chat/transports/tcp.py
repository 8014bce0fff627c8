"""JSON lines over TCP."""

from __future__ import annotations

import bisect
import os
import socket
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import trio

from chat.protocol import MAX_LINE_BYTES, ErrorCode, FrameTooLarge, LineSplitter

from .base import FrameRejected, StreamClosed
from .tls import Wire

READ_CHUNK = 16_384
KEEPALIVE_IDLE_SECONDS = 60
KEEPALIVE_INTERVAL_SECONDS = 15
KEEPALIVE_PROBES = 4
USER_TIMEOUT_SECONDS = 60
"""Data the peer has not acknowledged for this long ends the connection (TCP_USER_TIMEOUT):
a peer that vanished while we were writing to it is noticed in a minute, not after the
kernel's retransmissions give up (about 15 minutes)."""
LINGER_SECONDS = 1.0
"""After our FIN, how long to wait for the peer's, discarding what it still sends."""
LINGER_MAX_BYTES = 1024 * 1024


def enable_keepalive(stream: trio.SocketStream) -> None:
    """Let the kernel notice peers that vanished without closing (a pulled cable), both
    while the connection is idle (keepalive) and while we write to it (user timeout)."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_SECONDS * 1000),
    ):
        if hasattr(socket, option):
            stream.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def peer_name(stream: trio.SocketStream) -> str:
    """``host:port`` of the peer (``[host]:port`` for IPv6), for logs."""
    address = stream.socket.getpeername()
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def peer_address(stream: trio.SocketStream) -> str:
    """The peer's IP address alone (no port), for per-address limits."""
    address = stream.socket.getpeername()
    if isinstance(address, tuple) and address:
        return str(address[0])
    return ""


def format_peer(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Counts(Protocol):
    frames_sent: int


class Splitter(Protocol):
    """Bytes in, whole frames out (``LineSplitter``, or the legacy protocol's)."""

    @property
    def room(self) -> int: ...

    def feed(self, data: bytes) -> list[bytes]: ...


async def send_counted(
    sock: trio.socket.SocketType, data: bytes, ends: Sequence[int], counts: _Counts
) -> None:
    """Write ``data`` (frames ending at the offsets ``ends``) on a socket, adding to
    ``counts.frames_sent`` the frames that left whole, also when cancelled or failing
    halfway: a trio socket's ``send`` either sends or, when cancelled, does nothing,
    so the count of bytes that left is exact whatever happens."""
    sent = 0
    try:
        with memoryview(data) as view:
            while sent < len(data):
                with view[sent:] as remaining:
                    sent += await sock.send(remaining)
    finally:
        counts.frames_sent += bisect.bisect_right(ends, sent)


async def send_each(stream: trio.abc.SendStream, frames: Sequence[bytes], counts: _Counts) -> None:
    """Write each frame (its delimiter included) with a ``send_all`` of its own, counting
    it in ``counts.frames_sent`` once that returned: over a stream that is not a plain
    socket (``trio.SSLStream``), where a cancelled or failed ``send_all`` does not say
    how much left, a frame counts as written only when all of it did (so a write cut
    off halfway never counts the frames after the cut). A TLS stream over a ``Wire``
    (the node's) puts them all on the socket in one go, counted as exactly
    (``Wire.send_frames``); over any other transport it costs a socket write per frame."""
    try:
        if isinstance(stream, trio.SSLStream) and isinstance(stream.transport_stream, Wire):
            await stream.transport_stream.send_frames(stream, frames, counts)
            return
        for frame in frames:
            await stream.send_all(frame)
            counts.frames_sent += 1
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise StreamClosed(str(exc)) from exc


class Rest:
    """What a ``LineStream.send_now`` left unwritten: ``data`` (the tail of the frames it
    was given), with the offsets where its frames end."""

    __slots__ = ("data", "ends")

    def __init__(self, data: bytes, ends: list[int]) -> None:
        self.data = data
        self.ends = ends


def _joined(frames: Sequence[bytes]) -> tuple[bytes, list[int]]:
    """The frames as one write, each with its delimiter, and where each ends."""
    data = b"\n".join(frames) + b"\n"
    ends, end = [], 0
    for frame in frames:
        end += len(frame) + 1
        ends.append(end)
    return data, ends


class LineStream:
    """A ``MessageStream`` over a byte stream: one JSON object per ``\\n``-terminated line."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: str,
        max_line: int = MAX_LINE_BYTES,
        *,
        address: str = "",
        buffered: bytes = b"",
    ) -> None:
        """``buffered``: bytes already read from ``stream`` that belong to the first
        frames (what followed a PROXY protocol header in the same read)."""
        self._stream = stream
        self.peer = peer
        self.address = address
        self._splitter: Splitter = LineSplitter(max_line)
        self._ready: deque[bytes] = deque()
        self.frames_sent = 0
        self._buffered = buffered
        self._peer_closed = False
        """The peer's end of stream was read: nothing to linger for at close."""
        self.can_send_now = isinstance(stream, trio.SocketStream)
        """A plain socket: ``send_now`` can write to it without waiting."""

    async def receive(self) -> bytes:
        while not self._ready:
            if self._buffered:
                data, self._buffered = self._buffered, b""
            else:
                data = await self._receive_some()
            if not data:
                self._peer_closed = True
                raise StreamClosed("end of stream")
            try:
                self._ready.extend(self._splitter.feed(data))
            except FrameTooLarge as exc:
                raise FrameRejected(ErrorCode.FRAME_TOO_LARGE, str(exc), fatal=True) from exc
        return self._ready.popleft()

    def frames_waiting(self) -> bool:
        return bool(self._ready) or bool(self._buffered)

    async def _receive_some(self) -> bytes:
        try:
            return bytes(await self._stream.receive_some(min(READ_CHUNK, self._splitter.room)))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosed(str(exc)) from exc

    async def send(self, frames: Sequence[bytes]) -> None:
        if not isinstance(self._stream, trio.SocketStream):
            await send_each(self._stream, [frame + b"\n" for frame in frames], self)
            return
        data, ends = _joined(frames)
        try:
            await send_counted(self._stream.socket, data, ends, self)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosed(str(exc)) from exc

    def send_now(self, frames: Sequence[bytes]) -> Rest | None:
        """Write frames now, without a schedule point, as far as the kernel takes them
        (only where ``can_send_now``, and only while no ``send`` is under way): None
        when all of them left, else what is left, to be written with ``send_rest``
        before anything else. ``frames_sent`` counts the frames that left whole. The
        writer of a connection whose outbox is empty uses it to write a delivered
        message at once, instead of waking a task to write it."""
        assert isinstance(self._stream, trio.SocketStream)
        fd = self._stream.socket.fileno()  # -1 once closed (never a reused number)
        if fd < 0:
            raise StreamClosed("closed")
        data, ends = _joined(frames)
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise StreamClosed(str(exc)) from exc
        left = bisect.bisect_right(ends, sent)
        self.frames_sent += left
        if sent == len(data):
            return None
        return Rest(data[sent:], [end - sent for end in ends[left:]])

    async def send_rest(self, rest: Rest) -> None:
        """Write what ``send_now`` left (counted in ``frames_sent`` as ``send`` does)."""
        assert isinstance(self._stream, trio.SocketStream)
        try:
            await send_counted(self._stream.socket, rest.data, rest.ends, self)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosed(str(exc)) from exc

    async def aclose(self) -> None:
        """Close without a reset: the peer must be able to read our last words.

        Closing a socket whose receive buffer holds unread bytes makes the kernel send
        RST, and a peer that gets RST may lose the data still on its way to it, such as
        the ``frame_too_large`` error. So: send FIN, discard what the peer still sends
        for a moment (a bounded amount), then close.
        """
        stream = self._stream
        if isinstance(stream, trio.SSLStream):
            await _close_tls(stream, linger=not self._peer_closed)
            return
        if isinstance(stream, trio.abc.HalfCloseableStream) and not self._peer_closed:
            with trio.move_on_after(LINGER_SECONDS):
                await _linger(stream)
        await stream.aclose()


async def _linger(stream: trio.abc.HalfCloseableStream) -> None:
    """Send FIN, then discard what the peer still sends until its FIN (or a bound)."""
    try:
        await stream.send_eof()
        discarded = 0
        while discarded < LINGER_MAX_BYTES:
            data = await stream.receive_some(READ_CHUNK)
            if not data:
                break
            discarded += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        pass


async def _close_tls(stream: trio.SSLStream[trio.abc.Stream], *, linger: bool) -> None:
    """The same over TLS: our ``close_notify``, the peer's answer, then the TCP linger;
    all within ``LINGER_SECONDS``. The TCP stream is closed whatever happens (a
    write cut off: ``unwrap`` then fails at once)."""
    transport = stream.transport_stream
    if linger:
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await stream.unwrap()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass
            else:
                if isinstance(transport, trio.abc.HalfCloseableStream):
                    await _linger(transport)
    await transport.aclose()
