"""A client of the original system's protocol, written from its description alone
(/work/shared/legacy-protocol.md): numbered JSON objects, no rids, no error replies.

It writes each request ended the way it is told (NUL like the original client,
``\\n``, or nothing), and reads the server's objects one at a time: each must be a
whole JSON object ended by ``\\n`` (the server writes one object per write)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from .support import RawClient

DEADLINE = 20.0


class LegacyClient:
    def __init__(self, stream: trio.SocketStream, end: bytes = b"\0") -> None:
        self.raw = RawClient(stream)
        """Reads the server's lines (and sees the connection close)."""
        self.end = end

    @property
    def buffer(self) -> bytes:
        """What arrived and was not read yet."""
        return self.raw.buffer

    async def send(self, msgid: int, **fields: Any) -> None:
        await self.send_raw(json.dumps({"msgid": msgid, **fields}, separators=(",", ":")).encode())

    async def send_raw(self, data: bytes, end: bytes | None = None) -> None:
        await self.raw.send(data + (self.end if end is None else end))

    async def next(self, within: float = DEADLINE) -> dict[str, Any]:
        """The next object from the server (each ends with one newline)."""
        value = await self.raw.line(within)
        assert isinstance(value, dict), value
        return value

    async def nothing(self, wait: float = 0.3) -> None:
        """Nothing arrives within ``wait`` (use only where no sentinel can be sent)."""
        with trio.move_on_after(wait):
            value = await self.next(wait + 1)
            raise AssertionError(f"unexpected {value}")

    async def closed(self, within: float = DEADLINE) -> bool:
        return await self.raw.closed(within)

    # --- the requests that have acks ------------------------------------------

    async def register(self, name: str, password: str = "secret") -> int:
        await self.send(4, name=name, password=password)
        ack = await self.next()
        assert ack["msgid"] == 5 and ack["errno"] == 0, ack
        return int(ack["id"])

    async def login(self, user_id: int, password: str = "secret") -> dict[str, Any]:
        """The login ack, with its nested JSON strings parsed (as the clients do)."""
        await self.send(1, id=user_id, password=password)
        ack = await self.next()
        assert ack["msgid"] == 2, ack
        return parse_ack(ack)


def parse_ack(ack: dict[str, Any]) -> dict[str, Any]:
    """The login ack with every list element (JSON text) parsed, as clients do."""
    parsed = dict(ack)
    for key in ("friends", "groups", "offlinemsg"):
        if key in ack:
            assert ack[key] and all(isinstance(item, str) for item in ack[key]), ack
            parsed[key] = [json.loads(item) for item in ack[key]]
    for group in parsed.get("groups", []):
        assert all(isinstance(user, str) for user in group["users"]), group
        group["users"] = [json.loads(user) for user in group["users"]]
    return parsed


@asynccontextmanager
async def legacy(port: int, end: bytes = b"\0") -> AsyncIterator[LegacyClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        yield LegacyClient(stream, end)
    finally:
        await stream.aclose()
