"""WebSocket clients for tests, with trio-websocket on the client side too.

``ws_client`` gives the same ``ChatClient`` the TCP tests use, so one test can
mix TCP and WebSocket users with the same helpers (``register``, ``login``,
``next_event``). ``raw_ws`` gives the bare connection, for tests of framing.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from chat.client import ChatClient
from chat.server import Node

CLIENT_MAX_MESSAGE = 16 * 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


def ws_url(node: Node) -> str:
    assert node.ws_ports, "the node was started without ws_port"
    return f"ws://127.0.0.1:{node.ws_ports[0]}/ws"


class _WebSocketLines(trio.abc.Stream):
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
            assert isinstance(message, str), "the server sent a binary message"
            self._pending = message.encode() + b"\n"
        size = max_bytes or len(self._pending)
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk

    async def aclose(self) -> None:
        await self._ws.aclose()


@asynccontextmanager
async def raw_ws(target: Node | str) -> AsyncIterator[WebSocketConnection]:
    """A bare WebSocket connection to a node, or to a ``ws://`` URL (nginx)."""
    url = target if isinstance(target, str) else ws_url(target)
    async with open_websocket_url(url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
        yield ws


@asynccontextmanager
async def ws_client(target: Node | str) -> AsyncIterator[ChatClient]:
    """A ``ChatClient`` over WebSocket; its reader lives as long as the block."""
    async with raw_ws(target) as ws:
        chat = ChatClient(_WebSocketLines(ws))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(chat._read)
            try:
                yield chat
            finally:
                await chat.aclose()
                nursery.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_web_conf(http_port: int, ws_ports: tuple[int, int]) -> str:
    """infra/nginx/nginx.conf with free ports everywhere and ``root`` at this checkout's web/.

    The absolute path, not a link in the prefix: nginx's workers (user nobody)
    cannot enter pytest's private temp folders."""
    text = (REPO / "infra/nginx/nginx.conf").read_text()
    for pattern, replacement in [
        (r"listen 8080\b", f"listen 127.0.0.1:{http_port}"),
        (r"server 127\.0\.0\.1:6080\b", f"server 127.0.0.1:{ws_ports[0]}"),
        (r"server 127\.0\.0\.1:6082\b", f"server 127.0.0.1:{ws_ports[1]}"),
        (r"listen 8000\b", f"listen 127.0.0.1:{free_port()}"),  # the TCP side, unused here
        (r"(?m)^(\s*)root web;", rf"\1root {REPO / 'web'};"),
    ]:
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"infra/nginx/nginx.conf: expected one {pattern!r}"
    return text
