"""The original system's framing over TCP, for its clients (``--legacy-port``).

In: request objects ended by NUL, by ``\\n`` or by nothing (``LegacySplitter``).
Out: one object per write, ended by ``\\n``: the original client parses what one
``recv()`` returns as one JSON document, so a write per object gives it the best
chance (it tolerates the trailing newline). A reply or event the legacy protocol
does not have is encoded as nothing and is not written at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from chat.protocol import MAX_LINE_BYTES
from chat.protocol.legacy import LegacySplitter

from .base import StreamClosed
from .tcp import LineStream, send_counted


class LegacyStream(LineStream):
    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: str,
        max_object: int = MAX_LINE_BYTES,
        *,
        address: str = "",
        buffered: bytes = b"",
    ) -> None:
        super().__init__(stream, peer, max_object, address=address, buffered=buffered)
        self._splitter = LegacySplitter(max_object)

    async def send(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            if not frame:
                self.frames_sent += 1  # nothing to write: it "left" once those before it did
                continue
            data = frame + b"\n"
            try:
                if isinstance(self._stream, trio.SocketStream):
                    await send_counted(self._stream.socket, data, [len(data)], self)
                else:
                    await self._stream.send_all(data)
                    self.frames_sent += 1
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise StreamClosed(str(exc)) from exc
