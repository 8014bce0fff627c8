"""The Redis broker's subscription thread: one pub/sub connection, polled with a
timeout so cancellation is noticed, handing what arrived to trio in batches.

When the connection breaks, the thread ends with the error and the broker's bridge
(``RedisBroker._bridge``) starts another after a backoff; through Sentinels the new
connection asks them for the master's address, so a subscription follows a failover.
"""

from __future__ import annotations

import time

import attrs
import redis
import trio

from .base import Notice
from .redis_names import text
from .wire import decode_notices

POLL_SECONDS = 0.5
"""How often the subscription thread looks up from ``get_message`` to check for cancellation."""
PING_SECONDS = 5.0
"""A subscription silent this long sends a PING: a half-open connection (a lost host, a
NAT that forgot us) never errors, it only stays silent, and a deaf node is worse than
a reconnecting one."""
RECEIVE_BATCH = 256
"""Pub/sub messages the subscription thread hands to trio at once, at most."""


@attrs.frozen
class Subscribed:
    """The subscription thread is listening on every channel now."""


@attrs.frozen
class Received:
    """Notices that arrived together, handed to trio at once; ``broadcast``: they came
    on the channel of every node."""

    notices: list[Notice]
    broadcast: bool = False


def listen(
    client: redis.Redis,
    channels: tuple[str, str],
    pong_timeout: float,
    send: trio.MemorySendChannel[Received | Subscribed],
) -> None:
    """The subscription thread: one connection's lifetime, until it breaks (a Redis
    error, or no answer to a PING within ``pong_timeout``) or the trio side is
    cancelled. ``channels``: this node's own, and the channel of every node."""
    own, everyone = channels
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(own, everyone)
        pending = 2
        heard = time.monotonic()
        pinged: float | None = None
        while True:
            trio.from_thread.check_cancelled()
            message = pubsub.get_message(timeout=POLL_SECONDS)
            now = time.monotonic()
            if message is None:
                if pinged is not None and now - pinged > pong_timeout:
                    raise redis.ConnectionError("the subscription did not answer a PING")
                if pinged is None and now - heard > PING_SECONDS:
                    pubsub.ping()
                    pinged = now
                continue
            heard, pinged = now, None  # anything at all proves the connection alive
            # Take everything that has arrived meanwhile: one hand-over per batch.
            batch = [message]
            while len(batch) < RECEIVE_BATCH:
                more = pubsub.get_message(timeout=0)
                if more is None:
                    break
                batch.append(more)
            direct: list[Notice] = []
            broadcast: list[Notice] = []
            for item in batch:
                if item["type"] == "subscribe":
                    pending -= 1
                    if pending == 0:
                        trio.from_thread.run(send.send, Subscribed())
                elif item["type"] == "message":
                    channel = text(item["channel"])
                    target = broadcast if channel == everyone else direct
                    target.extend(decode_notices(item["data"]))
            if direct:
                trio.from_thread.run(send.send, Received(direct))
            if broadcast:
                trio.from_thread.run(send.send, Received(broadcast, broadcast=True))
    finally:
        pubsub.close()
