"""Listening sockets, optionally shared by several processes (``SO_REUSEPORT``).

``trio.open_tcp_listeners`` cannot set ``SO_REUSEPORT``, which ``chat-server
serve --workers N`` needs: each worker is a process of its own listening on the
same port, and the kernel spreads new connections over them. With
``reuse_port=False`` this is ``trio.open_tcp_listeners`` itself.
"""

from __future__ import annotations

import socket as stdlib_socket

import trio

BACKLOG = 4096
"""Pending connections the kernel keeps per listener (capped by net.core.somaxconn)."""


async def open_listeners(
    port: int, host: str, *, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """Bind and listen on every address of ``host``; all closed again if one fails."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host)
    infos = await trio.socket.getaddrinfo(
        host, port, type=stdlib_socket.SOCK_STREAM, flags=stdlib_socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
                if family == stdlib_socket.AF_INET6:
                    sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners


def bound_ports(listeners: list[trio.SocketListener]) -> list[int]:
    """The ports actually listened on (useful with port 0)."""
    return sorted({int(listener.socket.getsockname()[1]) for listener in listeners})
