"""WebSocket clients for tests, with trio-websocket on the client side too.

``ws_client`` gives the same ``ChatClient`` the TCP tests use, so one test can
mix TCP and WebSocket users with the same helpers (``register``, ``login``,
``next_event``), and ``connector`` lets one test run over either transport (the
``connect`` fixture). ``raw_ws`` gives the bare connection, for tests of framing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from trio_websocket import WebSocketConnection, open_websocket_url

from chat.client import ChatClient, WebSocketLines, client_over
from chat.server import Node

from .support import client, free_port

CLIENT_MAX_MESSAGE = 16 * 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


def ws_url(node: Node) -> str:
    assert node.ws_ports, "the node was started without ws_port"
    return f"ws://127.0.0.1:{node.ws_ports[0]}/ws"


@asynccontextmanager
async def raw_ws(target: Node | str) -> AsyncIterator[WebSocketConnection]:
    """A bare WebSocket connection to a node, or to a ``ws://`` URL (nginx)."""
    url = target if isinstance(target, str) else ws_url(target)
    async with open_websocket_url(url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
        yield ws


@asynccontextmanager
async def ws_client(target: Node | str) -> AsyncIterator[ChatClient]:
    """A ``ChatClient`` over WebSocket; its reader lives as long as the block."""
    async with raw_ws(target) as ws, client_over(WebSocketLines(ws)) as chat:
        yield chat


Connect = Callable[[], AbstractAsyncContextManager[ChatClient]]
"""Opens one more client to the node under test: ``async with connect() as c``."""

TRANSPORTS = ["tcp", "ws"]


def connector(transport: str, node: Node) -> Connect:
    """How a test opens clients to ``node`` over ``transport`` (``tcp`` or ``ws``)."""
    if transport == "tcp":
        return lambda: client(node)
    if transport == "ws":
        return lambda: ws_client(node)
    raise ValueError(f"unknown transport {transport!r}")


def render_web_conf(
    http_port: int, ws_ports: tuple[int, int], https_port: int | None = None
) -> str:
    """infra/nginx/nginx.conf with free ports everywhere and ``root`` at this checkout's web/.

    The absolute path, not a link in the prefix: nginx's workers (user nobody)
    cannot enter pytest's private temp folders."""
    text = (REPO / "infra/nginx/nginx.conf").read_text()
    for pattern, replacement in [
        (r"listen 8080\b", f"listen 127.0.0.1:{http_port}"),
        (r"server 127\.0\.0\.1:6080\b", f"server 127.0.0.1:{ws_ports[0]}"),
        (r"server 127\.0\.0\.1:6082\b", f"server 127.0.0.1:{ws_ports[1]}"),
        (r"listen 8000\b", f"listen 127.0.0.1:{free_port()}"),  # the TCP side, unused here
        (r"listen 8443 ssl\b", f"listen 127.0.0.1:{https_port or free_port()} ssl"),
        (r"(?m)^(\s*)root web;", rf"\1root {REPO / 'web'};"),
    ]:
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"infra/nginx/nginx.conf: expected one {pattern!r}"
    return text
