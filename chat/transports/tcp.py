"""JSON lines over TCP."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Sequence

import trio

from chat.protocol import MAX_LINE_BYTES, ErrorCode, FrameTooLarge, LineSplitter

from .base import FrameRejected, StreamClosed

READ_CHUNK = 16_384
KEEPALIVE_IDLE_SECONDS = 60
KEEPALIVE_INTERVAL_SECONDS = 15
KEEPALIVE_PROBES = 4


def enable_keepalive(stream: trio.SocketStream) -> None:
    """Let the kernel notice peers that vanished without closing (a pulled cable)."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, option):
            stream.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class LineStream:
    """A ``MessageStream`` over a byte stream: one JSON object per ``\\n``-terminated line."""

    def __init__(self, stream: trio.abc.Stream, peer: str, max_line: int = MAX_LINE_BYTES) -> None:
        self._stream = stream
        self.peer = peer
        self._splitter = LineSplitter(max_line)
        self._ready: deque[bytes] = deque()

    async def receive(self) -> bytes:
        while not self._ready:
            try:
                data = await self._stream.receive_some(min(READ_CHUNK, self._splitter.room))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise StreamClosed(str(exc)) from exc
            if not data:
                raise StreamClosed("end of stream")
            try:
                self._ready.extend(self._splitter.feed(data))
            except FrameTooLarge as exc:
                raise FrameRejected(ErrorCode.FRAME_TOO_LARGE, str(exc), fatal=True) from exc
        return self._ready.popleft()

    async def send(self, frames: Sequence[bytes]) -> None:
        data = b"\n".join(frames) + b"\n"
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosed(str(exc)) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()
