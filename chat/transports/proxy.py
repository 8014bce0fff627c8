"""The PROXY protocol (v1 text and v2 binary, haproxy.org's proxy-protocol.txt): the
header a load balancer such as nginx (``proxy_protocol on;``) writes first on each
connection, naming the real client, so logs and per-address limits see it instead
of the proxy.

The header's content is parsed by the ``proxy-protocol`` library; this module only
reads it off a trio stream: exactly one header, the bytes after it (the client's
first frames, if they came in the same read) handed back to the caller. A stream
that does not begin with a valid header is refused early (``ProxyHeaderError``):
within ``HEADER_TIMEOUT``, at the first bytes that cannot start one, or past the
longest header v1 allows.
"""

from __future__ import annotations

import ipaddress

import attrs
import trio
from proxyprotocol import ProxyProtocolIncompleteError
from proxyprotocol.detect import ProxyProtocolDetect

HEADER_TIMEOUT = 5.0
"""Seconds a connection has to send its header."""
V1_PREFIX = b"PROXY "
V1_MAX_BYTES = 107
"""The longest v1 line, ``\\r\\n`` included (the specification's own bound)."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_BYTES = 16 + 65_535
READ_CHUNK = 4096


class ProxyHeaderError(Exception):
    """The stream did not begin with a valid PROXY protocol header."""


@attrs.frozen
class ProxiedPeer:
    """Who the header says the client is; ``None`` for a header without addresses
    (``LOCAL`` or ``UNKNOWN``: the proxy's own connection, a health check)."""

    host: str | None
    port: int | None
    rest: bytes
    """What followed the header in the bytes read."""


async def read_proxy_header(stream: trio.abc.ReceiveStream) -> ProxiedPeer:
    """Read one PROXY protocol header from ``stream`` (v1 or v2). Raises
    ``ProxyHeaderError``; the caller bounds the time (``HEADER_TIMEOUT``)."""
    buffer = b""
    while True:
        length = header_length(buffer)
        if length is not None and len(buffer) >= length:
            return _parse(buffer[:length], buffer[length:])
        data = await stream.receive_some(READ_CHUNK)
        if not data:
            raise ProxyHeaderError("the connection closed before a PROXY protocol header")
        buffer += data


def header_length(data: bytes) -> int | None:
    """The header's length in bytes once ``data`` shows it; None: read more. Raises
    ``ProxyHeaderError`` as soon as ``data`` cannot begin a header."""
    if data.startswith(V2_SIGNATURE):
        if len(data) < 16:
            return None
        return 16 + int.from_bytes(data[14:16], "big")
    if data.startswith(V1_PREFIX):
        end = data.find(b"\r\n", 0, V1_MAX_BYTES)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"no end of a PROXY v1 header in {V1_MAX_BYTES} bytes")
        return None
    if V2_SIGNATURE.startswith(data[:12]) or V1_PREFIX.startswith(data[:6]):
        return None  # too little yet to tell
    raise ProxyHeaderError(f"expected a PROXY protocol header, got {data[:16]!r}")


def _parse(header: bytes, rest: bytes) -> ProxiedPeer:
    try:
        result = ProxyProtocolDetect().unpack(header)
    except (ValueError, ProxyProtocolIncompleteError) as exc:
        raise ProxyHeaderError(f"a malformed PROXY protocol header ({exc})") from None
    if not result.proxied:
        return ProxiedPeer(None, None, rest)
    source = result.source
    if not isinstance(source, tuple):  # a unix socket address: no IP to speak of
        return ProxiedPeer(None, None, rest)
    host, port = source
    if not isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ProxiedPeer(None, None, rest)
    return ProxiedPeer(str(host), int(port), rest)
