"""The Redis broker: cluster-wide presence held by leases, and notices between nodes.

Redis holds nothing that matters: every message is in the database before any
notice about it is published, so Redis may lose everything (it keeps nothing on
disk) and the cluster only has to re-learn who is online where.

Keys and channels (one Redis database per cluster)::

    chat:presence:<user_id>   "<holder>@<incarnation>": the holder string
                              ("<node_id>/<serial>") of the one connection
                              logged in as that user, and a token of the node
                              process (serials restart with the process); a
                              lease: it expires after ``lease_seconds`` unless
                              the owning node's heartbeat renews it
    chat:epoch                a random token, written once by the first node
                              that finds it missing; a new token means Redis
                              lost its data (restart, flush)
    chat:settling             exists for ``settle_seconds`` after a new epoch:
                              claims are refused (``BrokerUnavailable``, so
                              ``login`` answers ``unavailable``) while every
                              live node re-asserts its users' leases
    chat:node:<node_id>       pub/sub channel: notices for one node
    chat:all                  pub/sub channel: notices for every node (a
                              ``Resync`` from a node that could not reach Redis)

Threads: redis-py blocks, so each command runs in ``trio.to_thread.run_sync``
under this broker's own ``CapacityLimiter``, on pooled connections. The pub/sub
subscription lives in one dedicated worker thread that polls ``get_message``,
checks ``trio.from_thread.check_cancelled()`` between polls and hands each
notice to a trio task with ``trio.from_thread.run``. When the subscription
breaks, the thread ends; the trio side waits (backoff) and starts a new one.

Failures and what covers them:

- a notice published while its node was not subscribed is lost: after every
  (re)subscription the node handles a ``Resync`` (every local session re-reads
  the store), so lost wake-ups delay messages, never lose them;
- a node that could not reach Redis may have failed to wake other nodes (the
  message is stored, the wake-up is not sent): once Redis answers again it
  publishes a ``Resync`` on ``chat:all``;
- Redis restarted empty: the first node to notice writes a new epoch and the
  settling key; each node's heartbeat re-creates the leases of the users it
  holds (renew-or-create, within one heartbeat of Redis answering, sooner when
  its subscription comes back) and then re-reads the store for them, since
  wake-ups sent while their lease was missing went nowhere;
- a node killed without warning stops renewing: its users' leases expire after
  ``lease_seconds`` and they can log in elsewhere;
- a node stopping gracefully releases its own users' leases (compare-and-delete
  on the holder string, so a late release never frees a newer login) and
  touches no one else's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import BrokerUnavailable, Evict, Notice, NoticeHandler, Push, Resync, Wake

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_SECONDS = 10.0
"""How long a presence lease lives without renewal: a dead node's users are free after this."""
POOL_SIZE = 8
"""Pooled connections (and worker threads) for commands; the subscription has its own."""
SOCKET_TIMEOUT = 2.0
"""A Redis command that takes longer than this counts as Redis being unavailable."""
CONNECT_TIMEOUT = 1.0
POLL_SECONDS = 0.5
"""How often the subscription thread looks up from ``get_message`` to check for cancellation."""
PING_SECONDS = 5.0
"""A subscription silent this long sends a PING: a half-open connection (a lost host, a
NAT that forgot us) never errors, it only stays silent, and a deaf node is worse than
a reconnecting one."""
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
"""Reconnection delays of the subscription: doubling from the first to the maximum."""
NOTICE_BUFFER = 1024
"""Notices received but not yet handled before the subscription thread waits."""
BATCH = 500
"""Keys per command or script call (presence renewal, locate), so Redis is never held long."""
KEY_PREFIX = "chat"

_SETTLING = -1

# Claim a user's lease unless Redis lost its data (then start settling) or is settling.
# Claiming again with the same holder succeeds (a retried command must not refuse itself).
_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  return -1
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return -1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Delete each key still held by the given holder (ARGV[i]); others are left alone.
_RELEASE = """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
"""

# Renew each lease still ours; re-create a missing one (Redis restarted or the lease
# lapsed); report the ones someone else holds now. Returns {recreated, conflicts}.
_RENEW = """
local recreated, conflicts = {}, {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  elseif not holder then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
    table.insert(recreated, i)
  else
    table.insert(conflicts, i)
  end
end
return {recreated, conflicts}
"""

# The current epoch; a missing one means Redis lost its data: write a new one and settle.
_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  return ARGV[1]
end
return epoch
"""


@attrs.frozen
class _Subscribed:
    """The subscription thread is listening on every channel now."""


def encode_notice(notice: Notice) -> bytes:
    """The wire form of a notice on a node's channel (JSON)."""
    body: dict[str, Any]
    if isinstance(notice, Wake):
        body = {"wake": list(notice.user_ids)}
    elif isinstance(notice, Push):
        body = {"push": notice.user_id, "payload": notice.payload.decode()}
    elif isinstance(notice, Resync):
        body = {"resync": True}
    else:
        raise TypeError(f"{notice!r} is never sent to another node")
    return json.dumps(body, separators=(",", ":")).encode()


def decode_notice(data: bytes) -> Notice | None:
    """Parse a notice; None (and a warning) for anything malformed, never an exception."""
    try:
        body = json.loads(data)
        if isinstance(body, dict):
            if "wake" in body:
                ids = body["wake"]
                if isinstance(ids, list) and all(_is_id(user_id) for user_id in ids):
                    return Wake(tuple(ids))
            elif "push" in body:
                user_id, payload = body["push"], body.get("payload")
                if _is_id(user_id) and isinstance(payload, str):
                    return Push(user_id, payload.encode())
            elif body.get("resync") is True:
                return Resync()
    except (ValueError, UnicodeError):
        pass
    log.warning("ignoring a malformed notice: %r", data[:200])
    return None


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def node_of(value: str) -> str:
    """The node id inside a lease value ``<node_id>/<serial>@<incarnation>``."""
    holder, at, _ = value.rpartition("@")
    node, slash, _ = (holder if at else value).rpartition("/")
    return node if slash else value


def _chunks(items: Sequence[T], size: int = BATCH) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisBroker:
    """Presence leases and notices through one Redis database, shared by the cluster's nodes.

    ``heartbeat_seconds`` (default a third of the lease) is how often leases are
    renewed; ``settle_seconds`` (default two heartbeats) is how long claims are
    refused after Redis lost its data, which must exceed the time a live node
    needs to re-assert its leases.
    """

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat_seconds: float | None = None,
        settle_seconds: float | None = None,
        pool_size: int = POOL_SIZE,
        socket_timeout: float = SOCKET_TIMEOUT,
    ) -> None:
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")
        self.node_id = node_id
        self.url = url
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds or lease_seconds / 3
        self.settle_seconds = (
            settle_seconds if settle_seconds is not None else 2 * self.heartbeat_seconds
        )
        if self.heartbeat_seconds >= lease_seconds:
            raise ValueError("heartbeat_seconds must be shorter than lease_seconds")
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": min(CONNECT_TIMEOUT, socket_timeout),
            "socket_keepalive": True,
            # One quick retry on a fresh connection: a pooled connection goes stale
            # when Redis restarts, and only the first command on it finds out.
            "retry": Retry(NoBackoff(), 1),
        }
        # from_url raises ValueError for a URL that is not redis://, rediss:// or unix://.
        self._pool = redis.ConnectionPool.from_url(url, max_connections=pool_size, **options)
        self._sub_pool = redis.ConnectionPool.from_url(
            url, max_connections=2, **(options | {"retry": Retry(NoBackoff(), 0)})
        )
        self._redis = redis.Redis(connection_pool=self._pool)
        self._limiter = trio.CapacityLimiter(pool_size)
        self._listen_limiter = trio.CapacityLimiter(1)
        self._claim_script = self._redis.register_script(_CLAIM)
        self._release_script = self._redis.register_script(_RELEASE)
        self._renew_script = self._redis.register_script(_RENEW)
        self._epoch_script = self._redis.register_script(_EPOCH)

        self._epoch_key = f"{KEY_PREFIX}:epoch"
        self._settling_key = f"{KEY_PREFIX}:settling"
        self._channel = self.channel_of(node_id)
        self._broadcast = f"{KEY_PREFIX}:all"

        self._incarnation = uuid.uuid4().hex[:12]
        self._claims: dict[int, str] = {}
        """The leases this node holds (user id -> holder); only these are renewed."""
        self._epoch: str | None = None
        self._handler: NoticeHandler | None = None
        self._degraded = False
        """A command failed since Redis last answered: others may have missed wake-ups."""
        self._outage_logged = False
        self._backoff = BACKOFF_FIRST
        self._pong_timeout = max(socket_timeout, POLL_SECONDS * 2)
        self._renewed_at = 0.0
        """``trio.current_time()`` of the last beat that reached Redis."""
        self._beat_now = trio.Event()
        self._subscribed = trio.Event()

    def __repr__(self) -> str:
        return f"RedisBroker({self.url!r}, {self.node_id!r})"

    # --- names ------------------------------------------------------------------

    @staticmethod
    def presence_key(user_id: int) -> str:
        return f"{KEY_PREFIX}:presence:{user_id}"

    @staticmethod
    def channel_of(node_id: str) -> str:
        return f"{KEY_PREFIX}:node:{node_id}"

    def _value(self, holder: str) -> str:
        """What a lease holds: the holder, made unique across restarts of this node."""
        return f"{holder}@{self._incarnation}"

    @property
    def lease_ms(self) -> int:
        return max(1, math.ceil(self.lease_seconds * 1000))

    @property
    def settle_ms(self) -> int:
        return max(1, math.ceil(self.settle_seconds * 1000))

    # --- the Broker protocol -------------------------------------------------------

    async def run(
        self,
        handler: NoticeHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe (reconnecting as needed) and renew this node's leases until cancelled.

        Starts once the first subscription attempt is over, whatever its outcome: a
        node whose Redis is down still serves, storing messages and answering
        ``unavailable`` to logins. If Redis is settling after losing its data, the
        start waits for that to end, so the node's first logins are not refused.
        """
        self._handler = handler
        try:
            async with trio.open_nursery() as nursery:
                attempted = trio.Event()
                nursery.start_soon(self._bridge, attempted)
                await attempted.wait()
                await self._beat()
                await self._sit_out_settling()
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._fence_watch)
                task_status.started()
        finally:
            self._handler = None

    async def claim(self, user_id: int, holder: str) -> bool:
        result = await self._call(
            self._claim_script,
            [self.presence_key(user_id), self._epoch_key, self._settling_key],
            [self._value(holder), self.lease_ms, uuid.uuid4().hex, self.settle_ms],
        )
        if result == _SETTLING:
            self._beat_now.set()  # perhaps this node has not noticed the new epoch yet
            raise BrokerUnavailable("presence is being re-asserted after Redis lost its data")
        if result == 1:
            self._claims[user_id] = holder
            return True
        return False

    async def release(self, user_id: int, holder: str) -> None:
        if self._claims.get(user_id) != holder:
            # Fenced off (or never held): the lease is left to expire, and the closing
            # connection must not wait on a Redis that may not answer.
            return
        # Forget the lease first: if Redis cannot be told now, it expires unrenewed.
        del self._claims[user_id]
        await self._call(self._release_script, [self.presence_key(user_id)], [self._value(holder)])

    async def locate(self, user_ids: Sequence[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for chunk in _chunks(list(dict.fromkeys(user_ids))):
            keys = [self.presence_key(user_id) for user_id in chunk]
            values = await self._call(self._redis.mget, keys)
            for user_id, value in zip(chunk, values, strict=True):
                text = _text(value)
                if text is not None:
                    found[user_id] = node_of(text)
        return found

    async def notify(self, node_id: str, notice: Notice) -> None:
        if node_id == self.node_id:
            self._deliver(notice)
            return
        await self._call(self._redis.publish, self.channel_of(node_id), encode_notice(notice))

    async def aclose(self) -> None:
        """Release the leases this node still holds (and only those), then disconnect."""
        claims, self._claims = list(self._claims.items()), {}
        try:
            for chunk in _chunks(claims):
                await self._call(
                    self._release_script,
                    [self.presence_key(user_id) for user_id, _ in chunk],
                    [self._value(holder) for _, holder in chunk],
                )
        except BrokerUnavailable as exc:
            log.warning("could not release %d leases (they will expire): %s", len(claims), exc)
        finally:
            self._pool.disconnect()
            self._sub_pool.disconnect()

    # --- commands -------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking redis-py call in a worker thread; Redis errors become
        ``BrokerUnavailable``. Not abandoned on cancellation: the socket timeouts
        bound how long it can take."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except (redis.RedisError, OSError) as exc:
            self._degraded = True
            raise BrokerUnavailable(f"redis: {exc}") from exc

    # --- subscription -----------------------------------------------------------------

    async def _bridge(self, attempted: trio.Event) -> None:
        """Keep one subscription thread alive, reconnecting with backoff."""
        send, receive = trio.open_memory_channel[Notice | _Subscribed](NOTICE_BUFFER)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._dispatch, receive, attempted)
            while True:
                try:
                    await trio.to_thread.run_sync(self._listen, send, limiter=self._listen_limiter)
                except (redis.RedisError, OSError) as exc:
                    # Loud once per outage, quiet while retrying.
                    first = self._subscribed.is_set() or not attempted.is_set()
                    log.log(
                        logging.WARNING if first else logging.DEBUG,
                        "no subscription to %s: %s; retrying",
                        self._channel,
                        exc,
                    )
                self._subscribed = trio.Event()
                attempted.set()
                await trio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _listen(self, send: trio.MemorySendChannel[Notice | _Subscribed]) -> None:
        """The subscription thread: one connection's lifetime, until it breaks or the
        trio side is cancelled."""
        pubsub = redis.Redis(connection_pool=self._sub_pool).pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self._channel, self._broadcast)
            pending = 2
            heard = time.monotonic()
            pinged: float | None = None
            while True:
                trio.from_thread.check_cancelled()
                message = pubsub.get_message(timeout=POLL_SECONDS)
                now = time.monotonic()
                if message is None:
                    if pinged is not None and now - pinged > self._pong_timeout:
                        raise redis.ConnectionError("the subscription did not answer a PING")
                    if pinged is None and now - heard > PING_SECONDS:
                        pubsub.ping()
                        pinged = now
                    continue
                heard, pinged = now, None  # anything at all proves the connection alive
                if message["type"] == "subscribe":
                    pending -= 1
                    if pending == 0:
                        trio.from_thread.run(send.send, _Subscribed())
                elif message["type"] == "message":
                    notice = decode_notice(message["data"])
                    if notice is not None:
                        trio.from_thread.run(send.send, notice)
        finally:
            pubsub.close()

    async def _dispatch(
        self, receive: trio.MemoryReceiveChannel[Notice | _Subscribed], attempted: trio.Event
    ) -> None:
        async for item in receive:
            if isinstance(item, _Subscribed):
                log.info("subscribed to %s", self._channel)
                self._backoff = BACKOFF_FIRST
                self._subscribed.set()
                attempted.set()
                self._beat_now.set()  # re-assert leases now if Redis came back empty
                # Notices published while we were not listening are lost: re-read the store.
                self._deliver(Resync())
            else:
                self._deliver(item)

    def _deliver(self, notice: Notice) -> None:
        if self._handler is not None:
            self._handler(notice)

    # --- leases -----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        self._renewed_at = trio.current_time()
        while True:
            with trio.move_on_after(self.heartbeat_seconds):
                await self._beat_now.wait()
            self._beat_now = trio.Event()
            await self._beat()

    async def _fence_watch(self) -> None:
        """Give up users whose leases may lapse while Redis is out of reach.

        Once no renewal has reached Redis for a lease minus a heartbeat, the leases
        run out within a heartbeat and another node may then log our users in: close
        their connections here first, rather than serve a user twice. This runs on its
        own clock, not after a beat, because a beat against a Redis that does not
        answer hangs for its socket timeouts. The users can log in again as soon as
        Redis answers."""
        margin = self.lease_seconds - self.heartbeat_seconds
        while True:
            fence_at = self._renewed_at + margin
            if trio.current_time() < fence_at:
                await trio.sleep_until(fence_at)
                continue
            self._fence(trio.current_time() - self._renewed_at)
            await trio.sleep(self.heartbeat_seconds / 2)  # still silent: look again soon

    def _fence(self, silent: float) -> None:
        if not self._claims:
            return
        log.error(
            "no lease renewal for %.1fs: closing %d connections whose users may be "
            "logged in elsewhere by now",
            silent,
            len(self._claims),
        )
        claims, self._claims = list(self._claims.items()), {}
        for user_id, holder in claims:
            self._deliver(Evict(user_id, holder))

    async def _beat(self) -> None:
        """Check the epoch and renew (or re-create) this node's leases; never raises
        ``BrokerUnavailable`` (the next beat tries again)."""
        claims = list(self._claims.items())
        started = trio.current_time()
        try:
            epoch = _text(
                await self._call(
                    self._epoch_script,
                    [self._epoch_key, self._settling_key],
                    [uuid.uuid4().hex, self.settle_ms],
                )
            )
            recreated: list[tuple[int, str]] = []
            conflicts: list[tuple[int, str]] = []
            for chunk in _chunks(claims):
                new, lost = await self._call(
                    self._renew_script,
                    [self.presence_key(user_id) for user_id, _ in chunk],
                    [self.lease_ms, *(self._value(holder) for _, holder in chunk)],
                )
                recreated += [chunk[i - 1] for i in new]
                conflicts += [chunk[i - 1] for i in lost]
            # A lease released while this beat was running must not be left re-created.
            stale = [(u, h) for u, h in recreated if self._claims.get(u) != h]
            if stale:
                await self._call(
                    self._release_script,
                    [self.presence_key(user_id) for user_id, _ in stale],
                    [self._value(holder) for _, holder in stale],
                )
        except BrokerUnavailable as exc:
            if not self._outage_logged:
                log.warning("Redis unavailable: %s (logins answer 'unavailable')", exc)
                self._outage_logged = True
            return
        self._renewed_at = started
        reset = self._epoch is not None and epoch != self._epoch
        self._epoch = epoch
        if reset:
            log.warning("Redis lost its data: re-asserted %d leases", len(recreated))
        elif recreated:
            log.warning("%d leases had lapsed and were re-created", len(recreated))
        for user_id, holder in conflicts:
            if self._claims.get(user_id) == holder:
                log.error("user %d is held elsewhere now: lease of %s lost", user_id, holder)
                del self._claims[user_id]
                self._deliver(Evict(user_id, holder))
        if self._outage_logged:
            log.info("Redis answers again")
            self._outage_logged = False
        if self._degraded:
            self._degraded = False
            # Still degraded if this fails: the next beat tries again.
            with contextlib.suppress(BrokerUnavailable):
                await self._call(self._redis.publish, self._broadcast, encode_notice(Resync()))
        if reset or recreated:
            # Wake-ups sent while these leases were missing went nowhere.
            self._deliver(Resync())

    async def _sit_out_settling(self) -> None:
        try:
            remaining_ms = await self._call(self._redis.pttl, self._settling_key)
        except BrokerUnavailable:
            return
        if remaining_ms > 0:
            wait = min(remaining_ms / 1000, self.settle_seconds)
            log.info("presence is settling after Redis lost its data: starting in %.1fs", wait)
            await trio.sleep(wait)
