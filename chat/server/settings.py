"""A node's settings: every limit is named here, with its default."""

from __future__ import annotations

import attrs

from chat.protocol import MAX_LINE_BYTES

OUTBOX_FRAMES = 256
"""Frames queued for one connection before its producers must wait."""
SLOW_CLIENT_SECONDS = 10.0
"""How long a producer waits on a full outbox, and how long one write to the connection
may take, before the client counts as too slow and is disconnected."""
DELIVERY_PAGE = 200
"""Kept messages read from the store at once for one user."""
WRITE_BATCH_BYTES = 64 * 1024
"""The writer joins queued frames into one write up to about this size."""
SHUTDOWN_GRACE_SECONDS = 5.0
"""On SIGTERM, how long connections get to flush before they are cut."""
CLOSE_GRACE_SECONDS = 3.0
"""How long a closing session may spend flushing and releasing presence."""


@attrs.frozen
class Settings:
    host: str = "127.0.0.1"
    port: int = 6000
    node_id: str = "node-1"
    outbox_frames: int = OUTBOX_FRAMES
    slow_client_seconds: float = SLOW_CLIENT_SECONDS
    delivery_page: int = DELIVERY_PAGE
    write_batch_bytes: int = WRITE_BATCH_BYTES
    max_frame_bytes: int = MAX_LINE_BYTES
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS
    close_grace_seconds: float = CLOSE_GRACE_SECONDS
    hash_concurrency: int = 2
    ws_port: int | None = None
    """Port for protocol v1 over WebSocket; ``None``: no WebSocket listener."""
    reuse_port: bool = False
    """Listen with ``SO_REUSEPORT``, sharing the ports with the other workers of
    ``chat-server serve --workers N``."""
