"""How the Redis broker names things: keys and channels under the cluster's prefix,
device names inside keys, node ids inside lease values (the layout is described in
``chat.broker.redis``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

from .endpoint import RedisEndpoint

T = TypeVar("T")

BATCH = 500
"""Keys per command or script call (presence renewal, locate), so Redis is never held long."""
DEFAULT_PREFIX = "chat"
"""Keys and channels start with ``chat:<database index>`` unless told otherwise."""


def device_token(device: str) -> str:
    """A device name as it appears in keys and fields: the hex of its UTF-8 bytes (any
    name is safe there, ``:`` and ``@`` included; ``""`` stays empty)."""
    return device.encode("utf-8", "surrogatepass").hex()


def device_name(token: str | bytes) -> str:
    """The device name of a ``device_token``."""
    text = token.decode() if isinstance(token, bytes) else token
    return bytes.fromhex(text).decode("utf-8", "surrogatepass")


def node_of(value: str) -> str:
    """The node id inside a lease value ``<node_id>/<serial>@<incarnation>``."""
    holder, at, _ = value.rpartition("@")
    node, slash, _ = (holder if at else value).rpartition("/")
    return node if slash else value


def default_prefix(endpoint: RedisEndpoint) -> str:
    """``chat:<database index>``: clusters on different databases of one Redis never
    share a channel (pub/sub ignores the database index)."""
    return f"{DEFAULT_PREFIX}:{endpoint.db}"


def check_prefix(prefix: str) -> str:
    """A prefix is 1-64 printable characters without spaces: it names keys and channels."""
    if not 1 <= len(prefix) <= 64 or not prefix.isprintable() or any(c.isspace() for c in prefix):
        raise ValueError(f"Redis prefix {prefix!r}: use 1-64 printable characters, no spaces")
    return prefix


def chunks(items: Sequence[T], size: int = BATCH) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
