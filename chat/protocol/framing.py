"""Split a TCP byte stream into JSON-lines frames, with no I/O.

TCP splits and joins writes anywhere, even inside a UTF-8 character, so a
frame is only complete once its ``\\n`` has arrived. The splitter keeps at
most one partial line and refuses to let it grow past the protocol's limit:
a connection can never make the server buffer more than ``max_line`` bytes
(plus the terminator) of an unfinished frame.
"""

from __future__ import annotations

MAX_LINE_BYTES = 65_536
"""Longest frame the protocol allows, not counting its ``\\n`` (or ``\\r\\n``)."""


class FrameTooLarge(Exception):
    """A line grew past the limit before its terminator arrived."""


class LineSplitter:
    """Turns chunks of bytes into complete lines.

    ``feed`` returns the lines completed by a chunk, without terminators and
    with blank (whitespace-only) lines dropped. ``room`` says how many bytes the
    caller may read next without breaking the memory bound.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max_line = max_line
        self._partial = bytearray()

    @property
    def room(self) -> int:
        """Bytes that may be read next; one more than a full line plus ``\\r\\n``."""
        return self._max_line + 2 - len(self._partial)

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        if isinstance(data, bytearray):
            data = bytes(data)
        lines: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            piece = data[start:end]
            if self._partial:
                self._partial += piece
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = piece
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._max_line:
                raise FrameTooLarge(f"a frame is longer than {self._max_line} bytes")
            if line.strip():
                lines.append(line)
        self._partial += data[start:]
        # A partial line may still end with the "\r" of a "\r\n", so allow one byte more.
        if len(self._partial) > self._max_line + 1:
            raise FrameTooLarge(f"a frame is longer than {self._max_line} bytes")
        return lines
