"""``--proxy-protocol``: the real client address from a PROXY v1 or v2 header, for logs
and per-address limits; a connection without one is refused. Without the flag a
PROXY header is bad input like any other."""

from __future__ import annotations

from ipaddress import IPv6Address
from pathlib import Path

import pytest
import trio
from proxyprotocol.result import ProxyResultIPv6, ProxyResultLocal
from proxyprotocol.v2 import ProxyProtocolV2

from chat.server import Node
from chat.transports.proxy import ProxyHeaderError, header_length

from .ops_support import parse, value
from .support import RawClient, running_node

V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 6000\r\n"


def v2(host: str, port: int) -> bytes:
    return ProxyProtocolV2().pack(
        ProxyResultIPv6((IPv6Address(host), port), (IPv6Address("::1"), 6000))
    )


async def dial(node: Node) -> RawClient:
    return RawClient(await trio.open_tcp_stream("127.0.0.1", node.ports[0]))


def test_header_length() -> None:
    assert header_length(b"") is None
    assert header_length(b"PROX") is None
    assert header_length(V1[:20]) is None
    assert header_length(V1 + b"more") == len(V1)
    header = v2("2001:db8::5", 4444)
    assert header_length(header[:10]) is None
    assert header_length(header + b"{}") == len(header)
    for bad in (b'{"type":"ping"}\n', b"GET / HTTP/1.1\r\n", b"PROXY" + b"x" * 200):
        with pytest.raises(ProxyHeaderError):
            header_length(bad)
    with pytest.raises(ProxyHeaderError):
        header_length(b"PROXY TCP4 " + b"1" * 120)


async def test_the_real_address_counts_for_the_address_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    async with running_node(
        url, proxy_protocol=True, trusted_addresses=(), address_logins_per_minute=1
    ) as node:
        # v1, with the first request in the same write.
        first = await dial(node)
        await first.send(V1 + b'{"type":"register","rid":1,"name":"ann","password":"pw"}\n')
        assert (await first.line())["type"] == "ok"
        await first.send(b'{"type":"register","rid":2,"name":"bob","password":"pw"}\n')
        refused = await first.line()
        assert refused["code"] == "rate_limited", refused
        # The same client address over another connection: the same budget.
        again = await dial(node)
        await again.send(V1 + b'{"type":"register","name":"cat","password":"pw"}\n')
        assert (await again.line())["code"] == "rate_limited"
        # Another client behind the same proxy (v2, IPv6, the header split in two writes).
        other = await dial(node)
        header = v2("2001:db8::5", 4444)
        await other.send(header[:9])
        await trio.sleep(0.05)
        await other.send(header[9:] + b'{"type":"register","name":"dan","password":"pw"}\n')
        assert (await other.line())["type"] == "ok"


async def test_a_local_header_keeps_the_socket_address(tmp_path: Path) -> None:
    # LOCAL (the proxy's own health check): the peer is the proxy itself, loopback here.
    url = f"sqlite:///{tmp_path}/chat.db"
    async with running_node(url, proxy_protocol=True, address_logins_per_minute=1) as node:
        c = await dial(node)
        await c.send(ProxyProtocolV2().pack(ProxyResultLocal()))
        for n in range(3):  # loopback is trusted: no budget
            await c.send(f'{{"type":"register","name":"u{n}","password":"pw"}}\n'.encode())
            assert (await c.line())["type"] == "ok"


async def test_with_the_flag_a_connection_without_a_header_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    async with running_node(url, proxy_protocol=True) as node:
        for opening in (b'{"type":"ping"}\n', b"PROXY TCP4 nonsense\r\n"):
            c = await dial(node)
            await c.send(opening)
            refused = await c.line()
            assert (refused["type"], refused["code"]) == ("error", "bad_frame"), refused
            assert "PROXY" in refused["message"]
            assert await c.closed()
        figures = parse(node.services.metrics.render())
        assert value(figures, "chat_connections_refused_total", reason="proxy_header") == 2


async def test_without_the_flag_a_header_is_bad_input(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    async with running_node(url) as node:
        c = await dial(node)
        await c.send(V1 + b'{"type":"ping","rid":1}\n')
        assert (await c.line())["code"] == "bad_json"
        assert (await c.line())["type"] == "ok"
        # A v2 header is binary: whatever lines it makes are bad input too, and the
        # connection stays usable.
        await c.send(v2("2001:db8::5", 4444) + b'\n{"type":"ping","rid":2}\n')
        while (reply := await c.line()).get("rid") != 2:
            assert reply["type"] == "error", reply
        assert reply["type"] == "ok"
