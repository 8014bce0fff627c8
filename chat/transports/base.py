"""One interface for every transport: a stream of whole protocol frames.

The session reads and writes frames and never learns whether they travel as
JSON lines over TCP or as WebSocket text messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chat.protocol import ErrorCode


class StreamClosed(Exception):
    """The peer closed the connection (or it broke)."""


class FrameRejected(Exception):
    """A frame broke the transport's rules; ``fatal`` ones end the connection."""

    def __init__(self, code: ErrorCode, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


class MessageStream(Protocol):
    peer: str
    """Who is at the other end, for logs."""
    address: str
    """The client's IP address (from the PROXY protocol header when there is one), for
    per-address limits; empty when the transport has none."""
    frames_sent: int
    """Frames handed whole to the operating system so far. Kept exact even when a
    ``send`` is cancelled or fails halfway, so the writer forgets precisely the
    kept messages that left, and no more."""

    async def receive(self) -> bytes | str:
        """The next frame; raises ``StreamClosed`` or ``FrameRejected``."""

    def frames_waiting(self) -> bool:
        """The next frame has arrived already (the client sent on before it had the
        answer to the last one): the session then pipelines sends. False when unsure."""

    async def send(self, frames: Sequence[bytes]) -> None:
        """Write frames in order; raises ``StreamClosed`` if the peer is gone.

        If cancelled or failing halfway, ``frames_sent`` says how many went out."""

    async def aclose(self) -> None:
        """Close the connection; safe to call twice."""
