"""The Redis broker: cluster-wide presence held by leases, and notices between nodes.

Redis holds nothing that matters: every message is in the database before any
notice about it is published, so Redis may lose everything (it keeps nothing on
disk) and the cluster only has to re-learn who is online where.

Keys and channels, all under the cluster's prefix ``P`` (``--redis-prefix``,
by default ``chat:<database index of the URL>``; Redis's pub/sub channels are
shared by every database of one server, so the prefix is what keeps two
clusters on one Redis apart)::

    P:presence:<user_id>   "<holder>@<incarnation>": the holder string
                           ("<node_id>/<serial>") of the one connection logged
                           in as that user, and a token of the node process
                           (serials restart with the process); a lease: it
                           expires after ``lease_seconds`` unless the owning
                           node's heartbeat renews it
    P:epoch                a random token, written by the first node that finds
                           it missing; a new token means Redis lost its data
                           (restart, flush), or is new
    P:node:<node_id>       pub/sub channel: notices for one node, in batches
    P:all                  pub/sub channel: notices for every node (a ``Resync``
                           from a node that could not reach Redis, or from the
                           node that found the epoch missing)
    P:nodes                set of the running node processes ("<node_id>@<incarnation>")
    P:alive:<node>         liveness of one node process: renewed with its leases,
                           expires like them when the process dies
    P:held:<node>          hash user id -> lease value: the users that node process
                           holds, so that a survivor can announce them when it dies
    P:presence-clock       the last presence version handed out (see ``_NEXT_VERSION``)

Presence changes: every claim, release and re-created lease gets a version from
the same script that made it (so versions follow the order Redis applied the
changes in), and the node hands a ``PresenceChange`` to its own handler. A node
killed without warning cannot release anything: every node looks every
``reap_seconds`` for node processes whose liveness key expired, and one script
takes each of their users whose lease expired too off that node's list and
hands out a version, so exactly one survivor announces each of them.

Threads: redis-py blocks, so each command runs in ``trio.to_thread.run_sync``
under this broker's own ``CapacityLimiter``, on pooled connections. The pub/sub
subscription lives in one dedicated worker thread that polls ``get_message``,
checks ``trio.from_thread.check_cancelled()`` between polls and hands what it
received to a trio task with one ``trio.from_thread.run`` per batch (everything
that had arrived). When the subscription breaks, the thread ends; the trio side
waits (backoff) and starts a new one.

Routing: ``route`` takes a batch of wake-ups and pushes, and in one worker
thread call reads every recipient's lease (``MGET``) and publishes one message
per node that holds any of them (one pipelined round trip), so a burst of
messages to another node costs a few Redis round trips, not two per message.

Leases in doubt: whenever a command fails, the subscription breaks, or no
renewal has reached Redis for a lease minus a heartbeat, the node cannot be sure
its leases still stand (Redis may have restarted empty, or they may lapse): it
hands ``Pause`` to its handler, so its sessions neither deliver nor act, and
retries its heartbeat every ``RETRY_SECONDS``. The first heartbeat that then
succeeds renews or re-creates every lease the node holds; a lease someone else
holds by now ends that session (``Evict``), and only that one; then ``Resume``
and a ``Resync``. So a Redis restart shorter than a lease disconnects nobody,
and a user is never served by two nodes at once.

Failures and what covers them:

- a notice published while its node was not subscribed is lost: after every
  (re)subscription the node handles a ``Resync`` (every local session re-reads
  the store), so lost wake-ups delay messages, never lose them;
- a node that could not reach Redis may have failed to wake other nodes (the
  message is stored, the wake-up is not sent): once Redis answers again it
  publishes a ``Resync`` on ``P:all``;
- Redis restarted empty: every node's connections break, so each pauses at once;
  the first node back writes a new epoch and publishes a ``Resync`` on
  ``P:all`` (every node that hears it beats at once); each node's next beat
  re-creates its users' leases and resumes. A login elsewhere in between (no
  longer refused: there is no settling period) wins the user, and the paused
  session is closed when its node comes back: it never served meanwhile;
- Redis flushed without a restart (nobody's connection breaks): the node that
  finds the epoch missing broadcasts at once, and every node re-asserts within
  a round trip of hearing it, or within a heartbeat at the latest: in that short
  window a user could be served by two connections (docs/cluster.md);
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
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from chat.protocol.codec import BadServerMessage, decode_server_event, encode_event
from chat.protocol.messages import Event, PresenceEvent

from .base import (
    BrokerUnavailable,
    Evict,
    Notice,
    NoticeHandler,
    Pause,
    PresenceChange,
    PresencePush,
    Push,
    Resume,
    Resync,
    Wake,
)

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
NOTICE_BUFFER = 64
"""Batches of notices received but not yet handled before the subscription thread waits."""
RECEIVE_BATCH = 256
"""Pub/sub messages the subscription thread hands to trio at once, at most."""
BATCH = 500
"""Keys per command or script call (presence renewal, locate), so Redis is never held long."""
RETRY_SECONDS = 0.25
"""While its leases are in doubt, a node tries to renew them this often."""
REAP_SECONDS = 1.0
"""How often a node looks for nodes that died without a word, to announce their users
gone: a killed node's users are announced within a lease and this."""
REAP_BATCH = 1000
"""Users of one dead node looked at per look (the script holds Redis meanwhile)."""
DEFAULT_PREFIX = "chat"
"""Keys and channels start with ``chat:<database index>`` unless told otherwise."""

# What a node publishes on the broadcast channel when it finds the epoch missing (and
# after an outage): every node re-reads the store and renews its leases at once.
_RESYNC = b'{"resync":true}'

# The next presence version: Redis's clock in microseconds, but never less than one
# more than the last one handed out (a clock that steps back cannot reorder changes),
# and kept across a Redis that lost its data, unlike a counter. Formatted by hand:
# Lua would print a large number in exponent notation.
_NEXT_VERSION = """
local function next_version(clock)
  local now = redis.call('TIME')
  local version = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last = tonumber(redis.call('GET', clock) or '0')
  if version <= last then
    version = last + 1
  end
  redis.call('SET', clock, string.format('%.0f', version))
  return version
end
"""

# Claim a user's lease, note it among this node's users, and return the presence
# version of the change (0: someone else holds the user). A missing epoch (Redis is
# new or lost its data) is written first and announced, so that every node re-asserts
# its leases now. Claiming again with the same holder succeeds (a retried command must
# not refuse itself).
_CLAIM = (
    _NEXT_VERSION
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
local claimed = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not claimed and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  claimed = true
end
if not claimed then
  return 0
end
redis.call('HSET', KEYS[4], ARGV[6], ARGV[1])
return next_version(KEYS[3])
"""
)

# Release leases: KEYS are the presence keys, then the clock and this node's users;
# ARGV the holders (lease values), then the user ids, then "1" to forget the users
# here too. A key still held by its holder is deleted; so is one that lapsed while
# this node still lists the user as its own (nobody announced that departure yet).
# Returns the presence version of each release, 0 for a key someone else holds.
# With "0" (a node leaving with users its sessions did not release) the users stay
# listed: the survivors find them gone with this node and announce them.
_RELEASE = (
    _NEXT_VERSION
    + """
local n = #KEYS - 2
local clock, held = KEYS[n + 1], KEYS[n + 2]
local forget = ARGV[2 * n + 1] == '1'
local versions = {}
for i = 1, n do
  local holder = redis.call('GET', KEYS[i])
  local mine = holder == ARGV[i]
  if not holder then
    mine = redis.call('HGET', held, ARGV[n + i]) == ARGV[i]
  end
  if mine then
    redis.call('DEL', KEYS[i])
    if forget then
      redis.call('HDEL', held, ARGV[n + i])
    end
    versions[i] = next_version(clock)
  else
    versions[i] = 0
  end
end
return versions
"""
)

# Renew each lease still ours; re-create a missing one (Redis restarted or the lease
# lapsed) and hand out a presence version for it (the survivors may have announced
# the user gone); report the ones someone else holds now, and stop listing them as
# this node's. KEYS: the presence keys, then the clock and this node's users; ARGV:
# the lease in ms, the holders, then the user ids. Returns {recreated, conflicts,
# versions of the recreated}.
_RENEW = (
    _NEXT_VERSION
    + """
local n = #KEYS - 2
local clock, held = KEYS[n + 1], KEYS[n + 2]
local recreated, conflicts, versions = {}, {}, {}
for i = 1, n do
  local key = KEYS[i]
  local holder = redis.call('GET', key)
  if holder == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  elseif not holder then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
    redis.call('HSET', held, ARGV[n + i + 1], ARGV[i + 1])
    table.insert(recreated, i)
    table.insert(versions, next_version(clock))
  else
    redis.call('HDEL', held, ARGV[n + i + 1])
    table.insert(conflicts, i)
  end
end
return {recreated, conflicts, versions}
"""
)

# The current epoch; a missing one means Redis is new or lost its data: write a new
# one and announce it, so that every node re-asserts its leases now. Also: this node
# is alive for another lease (KEYS[2]) and listed among the cluster's nodes (KEYS[3]),
# so that the others notice when it dies.
_EPOCH = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return ARGV[1]
end
return epoch
"""

# Find the users of nodes that died without a word. KEYS: the set of nodes, the clock;
# ARGV: the prefix, this node's own name, how many users to look at per dead node.
# A node is dead once its liveness key has expired; each user it still lists is
# taken off its list here, atomically, so only one survivor ever announces it:
# gone (its lease expired: a new presence version), or logged in elsewhere meanwhile
# (that login was announced). Users whose lease has not expired yet stay listed for a
# later look; a dead node listing nobody is forgotten. Returns {user, version, ...}.
_REAP = (
    _NEXT_VERSION
    + """
local gone = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. ':alive:' .. node) == 0 then
    local held = ARGV[1] .. ':held:' .. node
    local page = redis.call('HSCAN', held, '0', 'COUNT', ARGV[3])[2]
    for i = 1, #page, 2 do
      local user, value = page[i], page[i + 1]
      local holder = redis.call('GET', ARGV[1] .. ':presence:' .. user)
      if not holder then
        redis.call('HDEL', held, user)
        table.insert(gone, tonumber(user))
        table.insert(gone, next_version(KEYS[2]))
      elseif holder ~= value then
        redis.call('HDEL', held, user)
      end
    end
    if redis.call('HLEN', held) == 0 then
      redis.call('SREM', KEYS[1], node)
    end
  end
end
return gone
"""
)


@attrs.frozen
class _Subscribed:
    """The subscription thread is listening on every channel now."""


@attrs.frozen
class _Received:
    """Notices that arrived together, handed to trio at once; ``broadcast``: they came
    on the channel of every node."""

    notices: list[Notice]
    broadcast: bool = False


def encode_presence(presence: Sequence[PresencePush]) -> bytes:
    """One message on a node's channel: ``{"presence": [[version, "event", [ids]], ...]}``.

    Sent apart from wake-ups: a node of an older version drops the whole message as
    malformed, and must not lose the wake-ups with it."""
    body = {
        "presence": [
            [item.version, encode_event(item.event).decode(), list(item.user_ids)]
            for item in presence
        ]
    }
    return json.dumps(body, separators=(",", ":")).encode()


def encode_notices(wake: Sequence[int] = (), push: Sequence[Push] = ()) -> bytes:
    """One message on a node's channel: ``{"wake": [ids], "push": [[id, "event"], ...]}``."""
    body: dict[str, Any] = {}
    if wake:
        body["wake"] = list(wake)
    if push:
        body["push"] = [[item.user_id, encode_event(item.event).decode()] for item in push]
    return json.dumps(body, separators=(",", ":")).encode()


def decode_notices(data: bytes) -> list[Notice]:
    """Parse a message of a node's channel; nothing (and a warning) for anything
    malformed, never an exception."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeError):
        body = None
    notices = _notices_in(body) if isinstance(body, dict) else None
    if not notices:
        log.warning("ignoring a malformed notice: %r", data[:200])
        return []
    return notices


def _notices_in(body: dict[str, Any]) -> list[Notice] | None:
    """The notices of a decoded message; None if any part of it is malformed."""
    notices: list[Notice] = []
    for key, value in body.items():
        if key == "wake":
            if not (isinstance(value, list) and value and all(_is_id(u) for u in value)):
                return None
            notices.append(Wake(tuple(value)))
        elif key == "push":
            if not isinstance(value, list):
                return None
            for item in value:
                if not (
                    isinstance(item, list)
                    and len(item) == 2
                    and _is_id(item[0])
                    and isinstance(item[1], str)
                ):
                    return None
                event = _event_of(item[1])
                if event is None:
                    # One event this node cannot read (say, a newer node's) costs that
                    # event only, never the wake-ups beside it.
                    log.warning("ignoring an event it cannot read: %r", item[1][:200])
                    continue
                notices.append(Push(item[0], event))
        elif key == "resync" and value is True:
            notices.append(Resync())
        elif key == "presence":
            if not isinstance(value, list):
                return None
            for item in value:
                presence = _presence_in(item)
                if presence is None:
                    return None
                if isinstance(presence, PresencePush):
                    notices.append(presence)
        else:
            return None
    return notices


def _presence_in(item: object) -> PresencePush | bool | None:
    """One ``[version, "event", [ids]]``: None if malformed, False if its event is not
    a presence event this node can read (it costs that item only)."""
    if not (
        isinstance(item, list)
        and len(item) == 3
        and _is_id(item[0])
        and isinstance(item[1], str)
        and isinstance(item[2], list)
        and item[2]
        and all(_is_id(u) for u in item[2])
    ):
        return None
    event = _event_of(item[1])
    if not isinstance(event, PresenceEvent):
        log.warning("ignoring a presence event it cannot read: %r", item[1][:200])
        return False
    return PresencePush(tuple(item[2]), event, item[0])


def _event_of(text: str) -> Event | None:
    """The typed event in a pushed event's JSON; None if it is not one we know."""
    try:
        message = json.loads(text)
        return decode_server_event(message) if isinstance(message, dict) else None
    except (ValueError, BadServerMessage):
        return None


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def node_of(value: str) -> str:
    """The node id inside a lease value ``<node_id>/<serial>@<incarnation>``."""
    holder, at, _ = value.rpartition("@")
    node, slash, _ = (holder if at else value).rpartition("/")
    return node if slash else value


def default_prefix(url: str) -> str:
    """``chat:<database index>``: clusters on different databases of one Redis never
    share a channel (pub/sub ignores the database index)."""
    db = redis.ConnectionPool.from_url(url).connection_kwargs.get("db", 0)
    return f"{DEFAULT_PREFIX}:{int(db)}"


def check_prefix(prefix: str) -> str:
    """A prefix is 1-64 printable characters without spaces: it names keys and channels."""
    if not 1 <= len(prefix) <= 64 or not prefix.isprintable() or any(c.isspace() for c in prefix):
        raise ValueError(f"Redis prefix {prefix!r}: use 1-64 printable characters, no spaces")
    return prefix


def _chunks(items: Sequence[T], size: int = BATCH) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisBroker:
    """Presence leases and notices through one Redis server, shared by the cluster's nodes.

    ``heartbeat_seconds`` (default a third of the lease) is how often leases are
    renewed; ``prefix`` names the cluster's keys and channels (default
    ``chat:<database index>``).
    """

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat_seconds: float | None = None,
        prefix: str | None = None,
        pool_size: int = POOL_SIZE,
        socket_timeout: float = SOCKET_TIMEOUT,
        reap_seconds: float = REAP_SECONDS,
    ) -> None:
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds}")
        self.node_id = node_id
        self.url = url
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds or lease_seconds / 3
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
        # Renewals never retry: a renewal that ran but whose reply was lost would, run
        # again, find its re-created leases in place and not report them re-created.
        # A failed beat is simply tried again (RETRY_SECONDS later, while in doubt).
        self._renew_pool = redis.ConnectionPool.from_url(
            url, max_connections=2, **(options | {"retry": Retry(NoBackoff(), 0)})
        )
        self.prefix = check_prefix(prefix) if prefix is not None else default_prefix(url)
        self._redis = redis.Redis(connection_pool=self._pool)
        self._limiter = trio.CapacityLimiter(pool_size)
        self._listen_limiter = trio.CapacityLimiter(1)
        self._beat_limiter = trio.CapacityLimiter(1)
        """The heartbeat's own thread and connections: a thousand sessions releasing at
        once (or any burst of commands) must not hold a beat up until leases lapse."""
        self._claim_script = self._redis.register_script(_CLAIM)
        self._release_script = self._redis.register_script(_RELEASE)
        beats = redis.Redis(connection_pool=self._renew_pool)
        self._renew_script = beats.register_script(_RENEW)
        self._epoch_script = beats.register_script(_EPOCH)
        self._reap_script = self._redis.register_script(_REAP)
        self.reap_seconds = reap_seconds

        self._epoch_key = f"{self.prefix}:epoch"
        self._channel = self.channel_of(node_id)
        self._broadcast = f"{self.prefix}:all"

        self._incarnation = uuid.uuid4().hex[:12]
        self.process_name = f"{node_id}@{self._incarnation}"
        """This node process in ``P:nodes``: a node restarted under the same id is
        another process, and the old one's users must still be announced gone."""
        self._clock_key = f"{self.prefix}:presence-clock"
        self._nodes_key = f"{self.prefix}:nodes"
        self._alive_key = f"{self.prefix}:alive:{self.process_name}"
        self._held_key = f"{self.prefix}:held:{self.process_name}"
        self._claims: dict[int, str] = {}
        """The leases this node holds (user id -> holder); only these are renewed."""
        self._epoch: str | None = None
        self._handler: NoticeHandler | None = None
        self._degraded = False
        """A command failed since Redis last answered: others may have missed wake-ups."""
        self._in_doubt: str | None = None
        """Why this node's leases are in doubt (its sessions are paused); None: confirmed."""
        self._doubts = 0
        """How many times the leases were put in doubt: a beat that began before the
        latest doubt cannot lift it."""
        self._recreated: set[int] = set()
        """Users whose lease was re-created since the last ``Resume``."""
        self._backoff = BACKOFF_FIRST
        self._pong_timeout = max(socket_timeout, POLL_SECONDS * 2)
        self._renewed_at = 0.0
        """``trio.current_time()`` of the last beat that reached Redis."""
        self._beat_now = trio.Event()
        self._subscribed = trio.Event()
        self.notices_sent = 0
        """Wake-ups and events for single users published for other nodes (metrics)."""
        self.notices_received = 0
        """Wake-ups and events for single users received from other nodes (metrics)."""

    def __repr__(self) -> str:
        return f"RedisBroker({self.url!r}, {self.node_id!r}, prefix={self.prefix!r})"

    # --- names ------------------------------------------------------------------

    def presence_key(self, user_id: int) -> str:
        return f"{self.prefix}:presence:{user_id}"

    def channel_of(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}"

    def _value(self, holder: str) -> str:
        """What a lease holds: the holder, made unique across restarts of this node."""
        return f"{holder}@{self._incarnation}"

    @property
    def lease_ms(self) -> int:
        return max(1, math.ceil(self.lease_seconds * 1000))

    @property
    def paused(self) -> bool:
        """This node's leases are in doubt: its sessions wait."""
        return self._in_doubt is not None

    # --- the Broker protocol -------------------------------------------------------

    async def run(
        self,
        handler: NoticeHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe (reconnecting as needed) and renew this node's leases until cancelled.

        Starts once the first subscription attempt and the first beat are over,
        whatever their outcome: a node whose Redis is down still serves, storing
        messages and answering ``unavailable`` to logins.
        """
        self._handler = handler
        try:
            async with trio.open_nursery() as nursery:
                attempted = trio.Event()
                nursery.start_soon(self._bridge, attempted)
                await attempted.wait()
                await self._beat()
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._fence_watch)
                nursery.start_soon(self._reap_watch)
                task_status.started()
        finally:
            self._handler = None

    async def claim(self, user_id: int, holder: str) -> bool:
        version = await self._call(
            self._claim_script,
            [self.presence_key(user_id), self._epoch_key, self._clock_key, self._held_key],
            [
                self._value(holder),
                self.lease_ms,
                uuid.uuid4().hex,
                self._broadcast,
                _RESYNC,
                user_id,
            ],
        )
        if self.paused:
            self._beat_now.set()  # Redis answers again: confirm the leases now
        if version:
            self._claims[user_id] = holder
            self._deliver(PresenceChange(user_id, True, int(version)))
            return True
        return False

    async def release(self, user_id: int, holder: str) -> None:
        if self._claims.get(user_id) != holder:
            # Evicted (or never held): nothing of ours to release.
            return
        # Forget the lease first: if Redis cannot be told now, it expires unrenewed.
        del self._claims[user_id]
        await self._release([(user_id, holder)], forget=True)

    async def _release(self, claims: Sequence[tuple[int, str]], *, forget: bool) -> None:
        """Release these leases, and announce each release that happened."""
        for chunk in _chunks(claims):
            versions = await self._call(
                self._release_script,
                [
                    *(self.presence_key(user_id) for user_id, _ in chunk),
                    self._clock_key,
                    self._held_key,
                ],
                [
                    *(self._value(holder) for _, holder in chunk),
                    *(user_id for user_id, _ in chunk),
                    "1" if forget else "0",
                ],
            )
            for (user_id, _), version in zip(chunk, versions, strict=True):
                if version:
                    self._deliver(PresenceChange(user_id, False, int(version)))

    async def locate(self, user_ids: Sequence[int]) -> dict[int, str]:
        return await self._call(self._locate, list(dict.fromkeys(user_ids)))

    async def route(
        self, wake: Sequence[int], push: Sequence[Push], presence: Sequence[PresencePush] = ()
    ) -> None:
        users = list(
            dict.fromkeys(
                [
                    *wake,
                    *(event.user_id for event in push),
                    *(user for item in presence for user in item.user_ids),
                ]
            )
        )
        if not users:
            return
        mine, sent = await self._call(self._route, users, wake, push, presence)
        self.notices_sent += sent
        for notice in mine:
            self._deliver(notice)

    async def ping(self) -> None:
        """Redis answers a PING (the node's readiness check). Abandoned if the caller
        gives up: the socket timeout ends the thread soon after. Raises
        ``BrokerUnavailable``; unlike other commands it puts no lease in doubt."""
        try:
            await trio.to_thread.run_sync(self._redis.ping, abandon_on_cancel=True)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc

    async def aclose(self) -> None:
        """Release the leases this node still holds (and only those), then disconnect.

        Users whose sessions did not end by themselves stay on this node's list, and
        this node is no longer alive: the survivors announce them gone (nothing here
        can: the node's routing has stopped)."""
        claims, self._claims = list(self._claims.items()), {}
        self._handler = None
        try:
            await self._release(claims, forget=False)
            await self._call(self._redis.delete, self._alive_key)
        except BrokerUnavailable as exc:
            log.warning("could not release %d leases (they will expire): %s", len(claims), exc)
        finally:
            self._pool.disconnect()
            self._sub_pool.disconnect()
            self._renew_pool.disconnect()

    # --- commands (each runs in a worker thread) --------------------------------------

    async def _call(
        self, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        """Run blocking redis-py calls in a worker thread (under ``limiter``, by default
        the commands' one); Redis errors become ``BrokerUnavailable`` and put the leases
        in doubt. Not abandoned on cancellation: the socket timeouts bound how long it
        can take."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter or self._limiter)
        except (redis.RedisError, OSError) as exc:
            self._degraded = True
            self._doubt(f"Redis does not answer ({exc})")
            raise BrokerUnavailable(f"redis: {exc}") from exc

    def _locate(self, users: Sequence[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for chunk in _chunks(users):
            values = self._redis.mget([self.presence_key(user_id) for user_id in chunk])
            for user_id, value in zip(chunk, values, strict=True):
                text = _text(value)
                if text is not None:
                    found[user_id] = node_of(text)
        return found

    def _route(
        self,
        users: Sequence[int],
        wake: Sequence[int],
        push: Sequence[Push],
        presence: Sequence[PresencePush],
    ) -> tuple[list[Notice], int]:
        """Look up every user's node, publish one message per other node (pipelined;
        presence events in a message of their own), and return what is for this node,
        and how many notices went to others."""
        nodes = self._locate(users)
        wakes: dict[str, list[int]] = defaultdict(list)
        pushes: dict[str, list[Push]] = defaultdict(list)
        presences: dict[str, list[PresencePush]] = defaultdict(list)
        for user_id in dict.fromkeys(wake):
            if user_id in nodes:
                wakes[nodes[user_id]].append(user_id)
        for event in push:
            if event.user_id in nodes:
                pushes[nodes[event.user_id]].append(event)
        for item in presence:
            by_node: dict[str, list[int]] = defaultdict(list)
            for user_id in item.user_ids:
                if user_id in nodes:
                    by_node[nodes[user_id]].append(user_id)
            for node, held in by_node.items():
                presences[node].append(PresencePush(tuple(held), item.event, item.version))
        others = (set(wakes) | set(pushes) | set(presences)) - {self.node_id}
        if others:
            pipe = self._redis.pipeline(transaction=False)
            for node in sorted(others):
                if wakes[node] or pushes[node]:
                    pipe.publish(self.channel_of(node), encode_notices(wakes[node], pushes[node]))
                if presences[node]:
                    pipe.publish(self.channel_of(node), encode_presence(presences[node]))
            pipe.execute()
        mine: list[Notice] = []
        if wakes.get(self.node_id):
            mine.append(Wake(tuple(wakes[self.node_id])))
        mine.extend(pushes.get(self.node_id, ()))
        mine.extend(presences.get(self.node_id, ()))
        sent = sum(len(wakes[node]) + len(pushes[node]) + len(presences[node]) for node in others)
        return mine, sent

    # --- subscription -----------------------------------------------------------------

    async def _bridge(self, attempted: trio.Event) -> None:
        """Keep one subscription thread alive, reconnecting with backoff."""
        send, receive = trio.open_memory_channel[_Received | _Subscribed](NOTICE_BUFFER)
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
                    if first:
                        # Redis may have restarted empty: our leases may be gone.
                        self._doubt(f"the subscription broke ({exc})")
                self._subscribed = trio.Event()
                attempted.set()
                await trio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _listen(self, send: trio.MemorySendChannel[_Received | _Subscribed]) -> None:
        """The subscription thread: one connection's lifetime, until it breaks or the
        trio side is cancelled."""
        pubsub = redis.Redis(connection_pool=self._sub_pool).pubsub()
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
                            trio.from_thread.run(send.send, _Subscribed())
                    elif item["type"] == "message":
                        channel = _text(item["channel"])
                        target = broadcast if channel == self._broadcast else direct
                        target.extend(decode_notices(item["data"]))
                if direct:
                    trio.from_thread.run(send.send, _Received(direct))
                if broadcast:
                    trio.from_thread.run(send.send, _Received(broadcast, broadcast=True))
        finally:
            pubsub.close()

    async def _dispatch(
        self, receive: trio.MemoryReceiveChannel[_Received | _Subscribed], attempted: trio.Event
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
                continue
            if item.broadcast:
                self._beat_now.set()  # another node found Redis empty, or recovered
            self.notices_received += sum(
                len(notice.user_ids) if isinstance(notice, Wake) else 1 for notice in item.notices
            )
            for notice in item.notices:
                self._deliver(notice)

    def _deliver(self, notice: Notice) -> None:
        if self._handler is not None:
            self._handler(notice)

    # --- leases -----------------------------------------------------------------------

    def _doubt(self, reason: str) -> None:
        """This node's leases may not stand: pause its sessions until a beat confirms them."""
        self._doubts += 1
        if self._in_doubt is not None:
            return
        self._in_doubt = reason
        self._beat_now.set()
        if self._claims:
            log.warning(
                "pausing %d sessions until their leases are confirmed: %s",
                len(self._claims),
                reason,
            )
        self._deliver(Pause(reason))

    def _confirm(self) -> None:
        if self._in_doubt is None:
            return
        self._in_doubt = None
        recreated, self._recreated = frozenset(self._recreated & set(self._claims)), set()
        if self._claims:
            log.warning(
                "leases confirmed: %d sessions resume (%d leases had to be re-created)",
                len(self._claims),
                len(recreated),
            )
        self._deliver(Resume(recreated))

    async def _heartbeat(self) -> None:
        self._renewed_at = trio.current_time()
        while True:
            interval = RETRY_SECONDS if self.paused else self.heartbeat_seconds
            with trio.move_on_after(interval):
                await self._beat_now.wait()
            self._beat_now = trio.Event()
            await self._beat()

    async def _fence_watch(self) -> None:
        """Pause the sessions before their leases may lapse while Redis is out of reach.

        Once no renewal has reached Redis for a lease minus a heartbeat, the leases
        run out within a heartbeat and another node may then log our users in. This
        runs on its own clock, not after a beat, because a beat against a Redis that
        does not answer hangs for its socket timeouts."""
        margin = self.lease_seconds - self.heartbeat_seconds
        while True:
            fence_at = self._renewed_at + margin
            if trio.current_time() < fence_at:
                await trio.sleep_until(fence_at)
                continue
            silent = trio.current_time() - self._renewed_at
            self._doubt(f"no lease renewal for {silent:.1f}s")
            await trio.sleep(self.heartbeat_seconds / 2)  # still silent: look again soon

    async def _reap_watch(self) -> None:
        """Announce the users of node processes that died without a word, each by one
        survivor only (see ``_REAP``)."""
        while True:
            await trio.sleep(self.reap_seconds)
            with contextlib.suppress(BrokerUnavailable):  # the beat deals with Redis trouble
                while gone := await self._call(
                    self._reap_script,
                    [self._nodes_key, self._clock_key],
                    [self.prefix, self.process_name, REAP_BATCH],
                ):
                    pairs = list(zip(gone[::2], gone[1::2], strict=True))
                    log.info("%d users of nodes that died are gone", len(pairs))
                    for user_id, version in pairs:
                        self._deliver(PresenceChange(int(user_id), False, int(version)))

    async def _beat(self) -> None:
        """Check the epoch and renew (or re-create) this node's leases, evicting the
        sessions whose user someone else holds now; never raises ``BrokerUnavailable``
        (the next beat tries again)."""
        claims = list(self._claims.items())
        started = trio.current_time()
        doubts = self._doubts
        try:
            epoch = _text(
                await self._call(
                    self._epoch_script,
                    [self._epoch_key, self._alive_key, self._nodes_key],
                    [
                        uuid.uuid4().hex,
                        self._broadcast,
                        _RESYNC,
                        self.lease_ms,
                        self.process_name,
                    ],
                    limiter=self._beat_limiter,
                )
            )
            recreated: list[tuple[int, str]] = []
            conflicts: list[tuple[int, str]] = []
            for chunk in _chunks(claims):
                new, lost, versions = await self._call(
                    self._renew_script,
                    [
                        *(self.presence_key(user_id) for user_id, _ in chunk),
                        self._clock_key,
                        self._held_key,
                    ],
                    [
                        self.lease_ms,
                        *(self._value(holder) for _, holder in chunk),
                        *(user_id for user_id, _ in chunk),
                    ],
                    limiter=self._beat_limiter,
                )
                recreated += [chunk[i - 1] for i in new]
                conflicts += [chunk[i - 1] for i in lost]
                # Remembered at once: if a later chunk fails, the next beat finds these
                # leases in place and would not know they had vanished.
                self._recreated.update(chunk[i - 1][0] for i in new)
                # The survivors may have announced these users gone (or Redis lost
                # them): online again, in any case.
                for i, version in zip(new, versions, strict=True):
                    self._deliver(PresenceChange(chunk[i - 1][0], True, int(version)))
            # A lease released while this beat was running must not be left re-created.
            stale = [(u, h) for u, h in recreated if self._claims.get(u) != h]
            if stale:
                await self._release(stale, forget=True)
        except BrokerUnavailable:
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
                log.error(
                    "user %d was logged in elsewhere while this node could not renew its "
                    "lease: closing %s",
                    user_id,
                    holder,
                )
                del self._claims[user_id]
                self._deliver(Evict(user_id, holder))
        if self._degraded:
            self._degraded = False
            # Still degraded if this fails: the next beat tries again.
            with contextlib.suppress(BrokerUnavailable):
                await self._call(self._redis.publish, self._broadcast, _RESYNC)
        if self._doubts != doubts:
            self._beat_now.set()  # put in doubt meanwhile: this beat proves too little
        elif self._subscribed.is_set():
            # Only with a live subscription: without one, a second Redis restart would go
            # unnoticed until the next beat. (Subscribing triggers a beat.)
            self._confirm()
        if reset or recreated:
            # Wake-ups sent while these leases were missing went nowhere.
            self._deliver(Resync())
