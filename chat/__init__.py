"""trio-chat: a clustered chat server on trio.

The public surface, re-exported here (and nothing else is promised):

- ``Node``, ``Settings``: run a node inside your own trio program;
- ``open_store``, ``Store``: the database (SQLite or MySQL/MariaDB URL);
- ``MemoryBroker``, ``RedisBroker``: alone, or part of a cluster;
- ``connect``, ``ChatClient``, ``ChatError``: a small async client for protocol v1.

Names load lazily, so ``import chat.protocol`` (pure logic) pulls in no trio, no
database driver and no Redis client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chat.broker import MemoryBroker
    from chat.broker.redis import RedisBroker
    from chat.client import ChatClient, ChatError, connect
    from chat.server import Node, Settings
    from chat.store import Store, open_store

_EXPORTS = {
    "Node": "chat.server",
    "Settings": "chat.server",
    "Store": "chat.store",
    "open_store": "chat.store",
    "MemoryBroker": "chat.broker",
    "RedisBroker": "chat.broker.redis",
    "ChatClient": "chat.client",
    "ChatError": "chat.client",
    "connect": "chat.client",
}

__all__ = [
    "ChatClient",
    "ChatError",
    "MemoryBroker",
    "Node",
    "RedisBroker",
    "Settings",
    "Store",
    "connect",
    "open_store",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chat' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
