"""Where chat-cli connects: a TCP address or a WebSocket URL, behind one ``open``.

Both give the same ``ChatClient`` (requests, replies in order, an event
channel), so nothing above this module knows which transport carries the
conversation. Every way of failing to connect becomes ``CannotConnect`` with a
message for a person.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import attrs
import trio
import trio_websocket

from chat.client import ChatClient, connect, connect_websocket, tls_context


class CannotConnect(Exception):
    pass


@attrs.frozen
class Target:
    host: str = "127.0.0.1"
    port: int = 6000
    url: str | None = None
    """A ``ws://`` or ``wss://`` URL, or ``tls://host:port`` (TCP with TLS); when set,
    ``host`` and ``port`` are not used."""
    tls: bool = False
    """TLS over TCP to ``host`` and ``port`` (``--tls``)."""
    ca_file: str | None = None
    """Verify the server's certificate against this PEM file instead of the system's."""
    insecure: bool = False
    """Do not verify the server's certificate at all (``--insecure``)."""

    def __str__(self) -> str:
        if self.url is not None:
            return self.url
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"tls://{address}" if self.tls else address


def check_url(url: str) -> str:
    """``url`` if it is a URL this client can use; raises ``ValueError``."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss", "tls"):
        raise ValueError(f"{url!r}: the URL must start with ws://, wss:// or tls://")
    if parts.scheme == "tls" and parts.port is None:
        raise ValueError(f"{url!r}: give the port, as in tls://HOST:PORT")
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
    url = urlsplit(target.url) if target.url is not None else None
    secure = target.tls or (url is not None and url.scheme in ("wss", "tls"))
    try:
        context = tls_context(target.ca_file, insecure=target.insecure) if secure else None
    except OSError as exc:  # an unreadable --ca-file
        raise CannotConnect(f"cannot use the CA file {target.ca_file}: {exc}") from None
    opener: AbstractAsyncContextManager[ChatClient]
    if url is not None and url.scheme == "tls":
        opener = connect(url.hostname or "", url.port or 0, ssl_context=context)
    elif target.url is not None:
        opener = connect_websocket(target.url, ssl_context=context)
    else:
        opener = connect(target.host, target.port, ssl_context=context)
    async with AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(opener)
        except (trio_websocket.HandshakeError, OSError, trio.BrokenResourceError) as exc:
            raise CannotConnect(f"cannot connect to {target}: {_reason(exc)}") from None
        yield client


def _reason(exc: BaseException) -> str:
    """The operating system's words for why ``exc`` happened: "connection refused";
    or why the server's certificate was refused."""
    refused = _verification(exc)
    if refused is not None:
        return (
            f"the server's certificate is not trusted ({refused.verify_message}): give "
            "the authority that signed it with --ca-file (or --insecure, not to check)"
        )
    if isinstance(exc, trio.BrokenResourceError) and isinstance(exc.__cause__, ssl.SSLError):
        return f"TLS failed: {exc.__cause__.reason or exc.__cause__}"
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


def _verification(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind ``exc``, if that is what it was."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                found = _verification(inner)
                if found is not None:
                    return found
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
