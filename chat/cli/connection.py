"""Where chat-cli connects: a TCP address or a WebSocket URL, behind one ``open``.

Both give the same ``ChatClient`` (requests, replies in order, an event
channel), so nothing above this module knows which transport carries the
conversation. Every way of failing to connect becomes ``CannotConnect`` with a
message for a person.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import attrs
import trio_websocket

from chat.client import ChatClient, connect, connect_websocket


class CannotConnect(Exception):
    pass


@attrs.frozen
class Target:
    host: str = "127.0.0.1"
    port: int = 6000
    url: str | None = None
    """A ``ws://`` URL; when set, ``host`` and ``port`` are not used."""

    def __str__(self) -> str:
        if self.url is not None:
            return self.url
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def check_url(url: str) -> str:
    """``url`` if it is a WebSocket URL this client can use; raises ``ValueError``."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"{url!r}: the URL must start with ws:// or wss://")
    if not parts.hostname:
        raise ValueError(f"{url!r}: the URL names no host")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    return url


@asynccontextmanager
async def open_client(target: Target) -> AsyncIterator[ChatClient]:
    """A connected client for the block; raises ``CannotConnect`` if there is none.

    Only opening is translated: errors raised inside the block pass unchanged.
    """
    if target.url is not None:
        opener = connect_websocket(target.url)
    else:
        opener = connect(target.host, target.port)
    async with AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(opener)
        except trio_websocket.HandshakeError as exc:
            raise CannotConnect(f"cannot connect to {target}: {_reason(exc)}") from None
        except OSError as exc:
            raise CannotConnect(f"cannot connect to {target}: {_reason(exc)}") from None
        yield client


def _reason(exc: BaseException) -> str:
    """The operating system's words for why ``exc`` happened: "connection refused"."""
    found = _errno(exc)
    return os.strerror(found).lower() if found else str(exc) or type(exc).__name__


def _errno(exc: BaseException | None) -> int | None:
    if exc is None:
        return None
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _errno(inner)
            if found:
                return found
    return _errno(exc.__cause__ or exc.__context__)
