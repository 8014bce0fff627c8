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
CLOSING_AT_ONCE = 64
"""Sessions that do their closing work at the same time; the others wait their turn."""
TRUSTED_ADDRESSES = ("127.0.0.0/8", "::1/128")
"""Client addresses exempt from the per-address budget: loopback, so load tests and a
proxy on the same host without the PROXY protocol keep working."""
ADDRESS_LOGINS_PER_MINUTE = 20
"""Password logins and registrations per minute from one client address."""
HASH_QUEUE = 16
"""Password hashes running or waiting on a node before new password requests are
refused at once: with two hashing threads, the last one waits well under a second."""
REQUEST_RATE = 200.0
REQUEST_BURST = 2_000
"""Per connection: this many requests per second on average, in bursts of this many.
An interactive client sends a few per second; a bulk importer pipelining sends
stays under 200/s sustained."""
FANOUT_RATE = 20_000.0
FANOUT_BURST = 100_000
"""Per user and node: deliveries the user's sends may cause, this many per second on
average, in bursts of this many (a one-to-one message costs 1, a group message the
group's other members). A member of a 5,000-member group sends 20 messages at once,
then 4 a second; one-to-one chat never comes near it."""
PIPELINE_DEPTH = 16
"""Sends one connection may have started and not yet answered: a client that sends
many at once has them stored together; beyond this, its next request is read once
the oldest is answered."""
DB_TIMEOUT_SECONDS = 5.0
"""A store call that has not finished in this time answers ``unavailable``."""
LOGIN_TIMEOUT_SECONDS = 60.0
"""A connection that has not logged in by then is closed."""
MAX_CONNECTIONS = 50_000
"""Open connections per node; one more gets an ``unavailable`` line and is closed."""


@attrs.frozen
class Settings:
    host: str = "127.0.0.1"
    port: int = 6000
    node_id: str = "node-1"
    outbox_frames: int = OUTBOX_FRAMES
    pipeline_depth: int = PIPELINE_DEPTH
    """Sends a connection may have under way at once (``chat.server.session``)."""
    slow_client_seconds: float = SLOW_CLIENT_SECONDS
    delivery_page: int = DELIVERY_PAGE
    ack_wait_seconds: float = SLOW_CLIENT_SECONDS
    """With ``acks``: how long delivery waits for an ack once more than 1,000 events are
    unacknowledged, before the connection is ended (``ack_timeout``)."""
    write_batch_bytes: int = WRITE_BATCH_BYTES
    max_frame_bytes: int = MAX_LINE_BYTES
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS
    close_grace_seconds: float = CLOSE_GRACE_SECONDS
    hash_concurrency: int = 2
    ws_port: int | None = None
    """Port for protocol v1 over WebSocket; ``None``: no WebSocket listener."""
    legacy_port: int | None = None
    """Port for the original system's protocol (its clients, unchanged); ``None``: off."""
    http_port: int | None = None
    """Port of the HTTP endpoint (``/metrics``, ``/healthz``, ``/readyz``); ``None``: off."""
    http_host: str | None = None
    """Address of the HTTP endpoint; ``None``: the same as ``host``."""
    trusted_addresses: tuple[str, ...] = TRUSTED_ADDRESSES
    address_logins_per_minute: int = ADDRESS_LOGINS_PER_MINUTE
    hash_queue: int = HASH_QUEUE
    request_rate: float = REQUEST_RATE
    request_burst: int = REQUEST_BURST
    fanout_rate: float = FANOUT_RATE
    fanout_burst: int = FANOUT_BURST
    db_timeout_seconds: float = DB_TIMEOUT_SECONDS
    login_timeout_seconds: float = LOGIN_TIMEOUT_SECONDS
    """0: no timeout."""
    max_connections: int = MAX_CONNECTIONS
    proxy_protocol: bool = False
    """TCP listeners read a PROXY protocol (v1 or v2) header first: the real client address."""
    tls_cert: str | None = None
    """PEM file with the certificate (and its chain) for TLS on the TCP and WebSocket
    listeners, with ``tls_key``; ``None``: plain text. Reloaded on SIGHUP."""
    tls_key: str | None = None
    """PEM file with the certificate's private key."""
    reuse_port: bool = False
    """Listen with ``SO_REUSEPORT``, sharing the ports with the other workers of
    ``chat-server serve --workers N``."""
