"""The Redis broker: cluster-wide presence held by leases, and notices between nodes.

Redis holds nothing that matters: every message is in the database before any
notice about it is published, so Redis may lose everything (it keeps nothing on
disk) and the cluster only has to re-learn who is online where.

Keys and channels, all under the cluster's prefix ``P`` (``--redis-prefix``,
by default ``chat:<database index of the URL>``; Redis's pub/sub channels are
shared by every database of one server, so the prefix is what keeps two
clusters on one Redis apart). ``<device>`` is the hex of the device name's UTF-8
bytes (empty for the device ``""``), so a name with ``:`` or ``@`` in it is safe::

    P:lease:<user_id>:<device>
                           "<holder>@<incarnation>": the holder string
                           ("<node_id>/<serial>") of the one connection logged
                           in as that device of the user, and a token of the
                           node process (serials restart with the process); a
                           lease: it expires after ``lease_seconds`` unless the
                           owning node's heartbeat renews it
    P:devices:<user_id>    set of <device>: the user's devices with a lease, and
                           ones whose lease lapsed that nobody has taken off yet
                           (their holder's release, or the survivor that reaps their
                           dead node, does); the user is online while any of
                           them has a lease, and "online" is announced when the
                           set gets its first member, "offline" when it loses its
                           last (see ``chat.broker.redis_scripts``)
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
    P:leases:<node>        hash "<user_id>:<device>" -> lease value: the device
                           leases that node process holds, so that a survivor can
                           take them off when it dies (and announce their users)
    P:presence-clock       the last presence version handed out

Every check runs in one Lua script (``chat.broker.redis_scripts``), so it is atomic:
a claim reads the device's lease and counts the user's live devices (at most
``MAX_DEVICES_ONLINE``: a member of ``P:devices`` whose lease is gone does not count),
and a user's set holds little more than the devices online, so each check is a
handful of commands. Redis 7.0 has no expiry per hash field: that is why each device
lease is a key of its own, with the set beside it to enumerate them.

Presence changes: every claim, release and re-created lease that changes whether a
user is online (the first device in, the last out) gets a version from the same
script that made it (so versions follow the order Redis applied the changes in),
and the node hands a ``PresenceChange`` to its own handler. A node killed without
warning cannot release anything: every node looks every ``reap_seconds`` for node
processes whose liveness key expired, and one script takes each of their devices
whose lease expired too off that node's list and off the user's devices, and hands
out a version when that was the user's last device, so exactly one survivor
announces each user gone, and only once none of the user's devices is left (a
device on a live node keeps the user online).

Threads: redis-py blocks, so each command runs in ``trio.to_thread.run_sync``
under this broker's own ``CapacityLimiter``, on pooled connections. The pub/sub
subscription lives in one dedicated worker thread that polls ``get_message``,
checks ``trio.from_thread.check_cancelled()`` between polls and hands what it
received to a trio task with one ``trio.from_thread.run`` per batch (everything
that had arrived). When the subscription breaks, the thread ends; the trio side
waits (backoff) and starts a new one.

Routing: ``route`` takes a batch of wake-ups, pushes, presence events and group
wake-ups, and in one worker thread call reads every recipient's device leases (one
script call, ``_LOOKUP``) and publishes one message per node that holds any device
of any of them (one pipelined round trip), so a burst of messages to another node
costs a few Redis round trips, not two per message. Group wake-ups go to every live
node: the same script reads which node processes are alive (``P:nodes`` whose
``P:alive`` key stands), and each gets its group wake-ups in the one message that
carries its other notices of the call (``chat.broker.wire``), so one node gets the
notices of one call in one message, in order, as this node's own handler does by
direct call. Publishing group wake-ups on ``P:all`` instead would save that read,
but they would then travel apart from the node's other notices (another channel,
another message, no order between them), and ``P:all`` means "beat now" to every
listener. A node missing from the live set at that moment (starting, or its
liveness lapsed while Redis was out of reach) misses the group wake-up: it reads
the store again anyway after subscribing, and after a beat that finds its liveness
or any lease had lapsed (a ``Resync``).

Leases in doubt: whenever a command fails, the subscription breaks, or no
renewal has reached Redis for a lease minus a heartbeat, the node cannot be sure
its leases still stand (Redis may have restarted empty, or they may lapse): it
hands ``Pause`` to its handler, so its sessions neither deliver nor act, and
retries its heartbeat every ``RETRY_SECONDS``. The first heartbeat that then
succeeds renews or re-creates every lease the node holds; a device lease someone
else holds by now ends that session (``Evict``), and only that one (as does a
lapsed lease that can no longer be re-created because the user has
``MAX_DEVICES_ONLINE`` other devices online by now); then ``Resume`` and a
``Resync``. So a Redis restart shorter than a lease disconnects nobody, and a
device is never served by two connections at once.

A beat renews the leases it read at its start; a session may end, and release its
lease, before the renewal reaches Redis. So a missing lease is re-created only if
``P:leases:<node>`` still lists it (a release takes it off in the same step), or
when that list itself may be gone (the epoch changed: Redis lost its data; or this
node was not alive: the reaper took its list). Before, such leases were re-created
under ordinary login/logout churn ("leases had lapsed and were re-created") and
their users announced online, then offline again.

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
  re-creates its devices' leases and resumes. A login of the same device elsewhere
  in between (no longer refused: there is no settling period) wins the device, and
  the paused session is closed when its node comes back: it never served meanwhile;
- Redis flushed without a restart (nobody's connection breaks): the node that
  finds the epoch missing broadcasts at once, and every node re-asserts within
  a round trip of hearing it, or within a heartbeat at the latest: in that short
  window a device could be served by two connections (docs/cluster.md);
- a Sentinel failover (``redis+sentinel://``, ``chat.broker.endpoint``): to a node
  it is a Redis restart that kept (nearly) everything: commands fail and the
  subscription breaks, the node pauses, every new connection asks the Sentinels for
  the master, and the next beat confirms (or re-creates the few lost) leases there;
- a node killed without warning stops renewing: its devices' leases expire after
  ``lease_seconds`` and they can log in elsewhere;
- a node stopping gracefully releases its own devices' leases (compare-and-delete
  on the holder string, so a late release never frees a newer login) and
  touches no one else's.

Nodes of protocol 1.1 (one lease per user, ``P:presence:<user_id>``) and of this
layout do not see each other's leases: a cluster moves to it all at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import redis_scripts
from .base import (
    MAX_DEVICES_ONLINE,
    BrokerUnavailable,
    Evict,
    GroupWake,
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
from .endpoint import RedisEndpoint
from .redis_names import (
    check_prefix,
    chunks,
    default_prefix,
    device_name,
    device_token,
    node_of,
    text,
)
from .redis_subscription import POLL_SECONDS, Received, Subscribed, listen
from .wire import RESYNC, encode_notices

__all__ = ["LEASE_SECONDS", "RedisBroker", "check_prefix", "device_name", "device_token", "node_of"]

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_SECONDS = 10.0
"""How long a presence lease lives without renewal: a dead node's devices are free after this."""
POOL_SIZE = 8
"""Pooled connections (and worker threads) for commands; the subscription has its own."""
SOCKET_TIMEOUT = 2.0
"""A Redis command that takes longer than this counts as Redis being unavailable."""
CONNECT_TIMEOUT = 1.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
"""Reconnection delays of the subscription: doubling from the first to the maximum."""
NOTICE_BUFFER = 64
"""Batches of notices received but not yet handled before the subscription thread waits."""
BATCH = 500
"""Keys per command or script call (presence renewal, locate), so Redis is never held long."""
RETRY_SECONDS = 0.25
"""While its leases are in doubt, a node tries to renew them this often."""
REAP_SECONDS = 1.0
"""How often a node looks for nodes that died without a word, to announce their users
gone: a killed node's users are announced within a lease and this."""
REAP_BATCH = 1000
"""Users of one dead node looked at per look (the script holds Redis meanwhile)."""


class RedisBroker:
    """Presence leases and notices through one Redis server, shared by the cluster's nodes.

    ``heartbeat_seconds`` (default a third of the lease) is how often leases are
    renewed; ``prefix`` names the cluster's keys and channels (default
    ``chat:<database index>``).
    """

    def __init__(
        self,
        endpoint: RedisEndpoint | str,
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
        # A str is parsed here (tests, tools); the node passes the endpoint it parsed.
        self.endpoint = RedisEndpoint.parse(endpoint) if isinstance(endpoint, str) else endpoint
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
        self._pool = self.endpoint.pool(max_connections=pool_size, **options)
        self._sub_pool = self.endpoint.pool(
            max_connections=2, **(options | {"retry": Retry(NoBackoff(), 0)})
        )
        # Renewals never retry: a renewal that ran but whose reply was lost would, run
        # again, find its re-created leases in place and not report them re-created.
        # A failed beat is simply tried again (RETRY_SECONDS later, while in doubt).
        self._renew_pool = self.endpoint.pool(
            max_connections=2, **(options | {"retry": Retry(NoBackoff(), 0)})
        )
        self.prefix = check_prefix(prefix) if prefix is not None else default_prefix(self.endpoint)
        self._redis = redis.Redis(connection_pool=self._pool)
        self._limiter = trio.CapacityLimiter(pool_size)
        self._listen_limiter = trio.CapacityLimiter(1)
        self._beat_limiter = trio.CapacityLimiter(1)
        """The heartbeat's own thread and connections: a thousand sessions releasing at
        once (or any burst of commands) must not hold a beat up until leases lapse."""
        self._claim_script = self._redis.register_script(redis_scripts.CLAIM)
        self._release_script = self._redis.register_script(redis_scripts.RELEASE)
        self._lookup_script = self._redis.register_script(redis_scripts.LOOKUP)
        beats = redis.Redis(connection_pool=self._renew_pool)
        self._ping_client = beats
        """The readiness probe shares the heartbeat's pool of 2 (the beat uses one)."""
        self._ping_limiter = trio.CapacityLimiter(1)
        self._renew_script = beats.register_script(redis_scripts.RENEW)
        self._epoch_script = beats.register_script(redis_scripts.EPOCH)
        self._reap_script = self._redis.register_script(redis_scripts.REAP)
        self.reap_seconds = reap_seconds

        self._epoch_key = f"{self.prefix}:epoch"
        self._channel = self.channel_of(node_id)
        self._broadcast = f"{self.prefix}:all"

        self._incarnation = uuid.uuid4().hex[:12]
        self.process_name = f"{node_id}@{self._incarnation}"
        """This node process in ``P:nodes``: a node restarted under the same id is
        another process, and the old one's devices must still be found gone."""
        self._clock_key = f"{self.prefix}:presence-clock"
        self._nodes_key = f"{self.prefix}:nodes"
        self._alive_key = f"{self.prefix}:alive:{self.process_name}"
        self._held_key = f"{self.prefix}:leases:{self.process_name}"
        self._claims: dict[tuple[int, str], str] = {}
        """The device leases this node holds ((user id, device) -> holder); only these
        are renewed."""
        self._epoch: str | None = None
        self._handler: NoticeHandler | None = None
        self._degraded = False
        """A command failed since Redis last answered: others may have missed wake-ups."""
        self._in_doubt: str | None = None
        """Why this node's leases are in doubt (its sessions are paused); None: confirmed."""
        self._doubts = 0
        """How many times the leases were put in doubt: a beat that began before the
        latest doubt cannot lift it."""
        self._recreated: set[str] = set()
        """Holders whose lease was re-created since the last ``Resume``."""
        self._recreate_all = False
        """The next beat re-creates every missing lease of ours, listed or not."""
        self.leases_recreated = 0
        """Leases found missing by a beat and re-created (metrics): only after Redis
        lost data or a beat came later than a lease, never for a released one."""
        self._backoff = BACKOFF_FIRST
        self._pong_timeout = max(socket_timeout, POLL_SECONDS * 2)
        self._renewed_at = 0.0
        """``trio.current_time()`` of the last beat that reached Redis."""
        self._beat_now = trio.Event()
        self._subscribed = trio.Event()
        self.notices_sent = 0
        """Wake-ups and events for single users or groups published for other nodes
        (metrics)."""
        self.notices_received = 0
        """Wake-ups and events for single users or groups received from other nodes
        (metrics)."""

    def __repr__(self) -> str:
        return f"RedisBroker({str(self.endpoint)!r}, {self.node_id!r}, prefix={self.prefix!r})"

    # --- names ------------------------------------------------------------------

    def lease_key(self, user_id: int, device: str) -> str:
        """The lease of one device of a user."""
        return f"{self.prefix}:lease:{user_id}:{device_token(device)}"

    def devices_key(self, user_id: int) -> str:
        """The set of a user's devices (as ``device_token``)."""
        return f"{self.prefix}:devices:{user_id}"

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

    async def claim(self, user_id: int, device: str, holder: str) -> bool:
        claimed, version = await self._call(
            self._claim_script,
            [self._epoch_key, self._clock_key, self._held_key],
            [
                self.prefix,
                user_id,
                device_token(device),
                self._value(holder),
                self.lease_ms,
                uuid.uuid4().hex,
                self._broadcast,
                RESYNC,
                MAX_DEVICES_ONLINE,
            ],
        )
        if self.paused:
            self._beat_now.set()  # Redis answers again: confirm the leases now
        if not claimed:
            return False
        before = self._claims.get((user_id, device))
        self._claims[(user_id, device)] = holder
        if before is not None and before != holder:
            # Another connection of this node held the device, and its lease lapsed:
            # the device is the new login's now.
            log.error(
                "device %r of user %d was logged in again while its lease had lapsed: closing %s",
                device,
                user_id,
                before,
            )
            self._deliver(Evict(user_id, before))
        if version:
            self._deliver(PresenceChange(user_id, True, int(version)))
        return True

    async def release(self, user_id: int, device: str, holder: str) -> None:
        if self._claims.get((user_id, device)) != holder:
            # Evicted (or never held): nothing of ours to release.
            return
        # Forget the lease first: if Redis cannot be told now, it expires unrenewed.
        del self._claims[(user_id, device)]
        self._recreated.discard(holder)
        await self._release([((user_id, device), holder)], forget=True)

    async def _release(
        self, claims: Sequence[tuple[tuple[int, str], str]], *, forget: bool
    ) -> None:
        """Release these device leases, and announce each user whose last device went."""
        for chunk in chunks(claims):
            versions = await self._call(
                self._release_script,
                [self._clock_key, self._held_key],
                [self.prefix, "1" if forget else "0", *self._triples(chunk)],
            )
            for ((user_id, _), _), version in zip(chunk, versions, strict=True):
                if version:
                    self._deliver(PresenceChange(user_id, False, int(version)))

    def _triples(self, claims: Sequence[tuple[tuple[int, str], str]]) -> list[int | str]:
        """(user id, device token, lease value) of each claim, flat, as the scripts take them."""
        flat: list[int | str] = []
        for (user_id, device), holder in claims:
            flat += [user_id, device_token(device), self._value(holder)]
        return flat

    async def locate(self, user_ids: Sequence[int]) -> dict[int, frozenset[str]]:
        _, found = await self._call(self._lookup, list(dict.fromkeys(user_ids)), False)
        return {
            user_id: frozenset(map(node_of, devices.values())) for user_id, devices in found.items()
        }

    async def devices(self, user_id: int) -> dict[str, str]:
        _, found = await self._call(self._lookup, [user_id], False)
        return {device: node_of(value) for device, value in found.get(user_id, {}).items()}

    async def route(
        self,
        wake: Sequence[int],
        push: Sequence[Push],
        presence: Sequence[PresencePush] = (),
        groups: Sequence[int] = (),
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
        if not users and not groups:
            return
        self.notices_sent += await self._call(
            self._route, users, wake, push, presence, list(dict.fromkeys(groups))
        )

    async def ping(self) -> None:
        """Redis answers a PING (the node's readiness check). Abandoned if the caller
        gives up: the socket timeout ends the thread soon after. Raises
        ``BrokerUnavailable``; unlike other commands it puts no lease in doubt."""
        try:
            # Its own connection and limiter: on the default thread limiter it took a 9th
            # connection of the commands' pool of 8 whenever they were all busy, and the
            # command that then found none failed ("Too many connections"), losing a
            # presence event under login churn.
            await trio.to_thread.run_sync(
                self._ping_client.ping, abandon_on_cancel=True, limiter=self._ping_limiter
            )
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc

    async def aclose(self) -> None:
        """Release the leases this node still holds (and only those), then disconnect.

        Devices whose sessions did not end by themselves stay on this node's list, and
        this node is no longer alive: the survivors take them off and announce the
        users gone (nothing here can: the node's routing has stopped)."""
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

    def _lookup(
        self, users: Sequence[int], alive: bool
    ) -> tuple[set[str], dict[int, dict[str, str]]]:
        """The devices with a lease of each of these users that has any (device -> lease
        value), and with ``alive``, the ids of the nodes whose process is alive."""
        nodes: set[str] = set()
        found: dict[int, dict[str, str]] = {}
        parts: list[Sequence[int]] = list(chunks(users)) or [()]
        for index, chunk in enumerate(parts):
            # The live nodes once, with the first chunk (or alone, for no users).
            want = "1" if alive and index == 0 else "0"
            reply = self._lookup_script([], [self.prefix, want, *chunk])
            nodes.update(text(name).rpartition("@")[0] for name in reply[0])
            for user_id, flat in zip(chunk, reply[1:], strict=True):
                if flat:
                    found[user_id] = {
                        device_name(device): text(value)
                        for device, value in zip(flat[::2], flat[1::2], strict=True)
                    }
        return nodes, found

    def _route(
        self,
        users: Sequence[int],
        wake: Sequence[int],
        push: Sequence[Push],
        presence: Sequence[PresencePush],
        groups: Sequence[int],
    ) -> int:
        """Look up the nodes of every user's devices (and with ``groups``, every live
        node), publish one message per other node (pipelined), and return how many
        notices went out. Nothing comes back to this node: its own sessions are the
        router's to reach (``Broker.route``)."""
        alive, found = self._lookup(users, bool(groups))
        nodes = {
            user: {node_of(value) for value in devices.values()} for user, devices in found.items()
        }
        wakes: dict[str, list[int]] = defaultdict(list)
        pushes: dict[str, list[Push]] = defaultdict(list)
        presences: dict[str, list[PresencePush]] = defaultdict(list)
        for user_id in dict.fromkeys(wake):
            for node in nodes.get(user_id, ()):
                wakes[node].append(user_id)
        for event in push:
            for node in nodes.get(event.user_id, ()):
                pushes[node].append(event)
        for item in presence:
            by_node: dict[str, list[int]] = defaultdict(list)
            for user_id in item.user_ids:
                for node in nodes.get(user_id, ()):
                    by_node[node].append(user_id)
            for node, held in by_node.items():
                presences[node].append(PresencePush(tuple(held), item.event, item.version))
        grouped = alive | {self.node_id} if groups else set()
        others = (set(wakes) | set(pushes) | set(presences) | grouped) - {self.node_id}
        if others:
            pipe = self._redis.pipeline(transaction=False)
            for node in sorted(others):
                pipe.publish(
                    self.channel_of(node),
                    encode_notices(
                        wakes[node],
                        pushes[node],
                        presences[node],
                        groups if node in grouped else (),
                    ),
                )
            pipe.execute()
        return sum(
            len(wakes[node])
            + len(pushes[node])
            + len(presences[node])
            + len(groups) * (node in grouped)
            for node in others
        )

    # --- subscription -----------------------------------------------------------------

    async def _bridge(self, attempted: trio.Event) -> None:
        """Keep one subscription thread alive, reconnecting with backoff."""
        send, receive = trio.open_memory_channel[Received | Subscribed](NOTICE_BUFFER)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._dispatch, receive, attempted)
            while True:
                try:
                    await trio.to_thread.run_sync(
                        listen,
                        redis.Redis(connection_pool=self._sub_pool),
                        (self._channel, self._broadcast),
                        self._pong_timeout,
                        send,
                        limiter=self._listen_limiter,
                    )
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

    async def _dispatch(
        self, receive: trio.MemoryReceiveChannel[Received | Subscribed], attempted: trio.Event
    ) -> None:
        async for item in receive:
            if isinstance(item, Subscribed):
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
            self.notices_received += sum(map(_weight, item.notices))
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
        holding = set(self._claims.values())
        recreated, self._recreated = frozenset(self._recreated & holding), set()
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
        """Take the devices of node processes that died without a word off their users,
        and announce each user left with none, by one survivor only (see
        ``redis_scripts.REAP``)."""
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
        sessions whose device someone else holds now; never raises ``BrokerUnavailable``
        (the next beat tries again)."""
        claims = list(self._claims.items())
        started = trio.current_time()
        doubts = self._doubts
        recreate_all = self._recreate_all
        try:
            epoch, was_alive = await self._call(
                self._epoch_script,
                [self._epoch_key, self._alive_key, self._nodes_key],
                [uuid.uuid4().hex, self._broadcast, RESYNC, self.lease_ms, self.process_name],
                limiter=self._beat_limiter,
            )
            epoch = text(epoch)
            # This process's list of leases may be gone (Redis lost its data, or the
            # reaper took it while this node was presumed dead): re-create every
            # missing lease. Else only those still listed (see ``RENEW``).
            recreate_all = recreate_all or epoch != self._epoch or not was_alive
            self._recreate_all = False
            recreated: list[tuple[tuple[int, str], str]] = []
            conflicts: list[tuple[tuple[int, str], str]] = []
            released: list[tuple[tuple[int, str], str]] = []
            for chunk in chunks(claims):
                new, lost, versions, gone = await self._call(
                    self._renew_script,
                    [self._clock_key, self._held_key, self._epoch_key],
                    [
                        self.prefix,
                        self.lease_ms,
                        MAX_DEVICES_ONLINE,
                        "" if recreate_all else epoch,
                        *self._triples(chunk),
                    ],
                    limiter=self._beat_limiter,
                )
                recreated += [chunk[i - 1] for i in new]
                conflicts += [chunk[i - 1] for i in lost]
                released += [chunk[i - 1] for i in gone]
                # Remembered at once: if a later chunk fails, the next beat finds these
                # leases in place and would not know they had vanished.
                self._recreated.update(chunk[i - 1][1] for i in new)
                # The survivors may have announced these users gone (or Redis lost
                # them): online again, unless another device kept them online.
                for i, version in zip(new, versions, strict=True):
                    if version:
                        user_id = chunk[i - 1][0][0]
                        self._deliver(PresenceChange(user_id, True, int(version)))
            # A lease released while this beat was running must not be left re-created.
            stale = [(key, h) for key, h in recreated if self._claims.get(key) != h]
            if stale:
                await self._release(stale, forget=True)
        except BrokerUnavailable:
            self._recreate_all = recreate_all  # the next beat does what this one could not
            return
        self._renewed_at = started
        self.leases_recreated += len(recreated)
        unlisted = [(key, h) for key, h in released if self._claims.get(key) == h]
        if unlisted:
            # Not released by this node, yet not on its list: the list itself went
            # (nothing else takes entries off it); the next beat re-creates them.
            log.warning("%d leases are missing from this node's list: re-creating", len(unlisted))
            self._recreate_all = True
            self._beat_now.set()
        reset = self._epoch is not None and epoch != self._epoch
        # Not listed as alive: group wake-ups went past this node meanwhile.
        lapsed = self._epoch is not None and not was_alive
        self._epoch = epoch
        if reset:
            log.warning("Redis lost its data: re-asserted %d leases", len(recreated))
        elif recreated:
            log.warning("%d leases had lapsed and were re-created", len(recreated))
        for (user_id, device), holder in conflicts:
            if self._claims.get((user_id, device)) == holder:
                log.error(
                    "device %r of user %d was logged in elsewhere (or the user has %d "
                    "devices online) while this node could not renew its lease: closing %s",
                    device,
                    user_id,
                    MAX_DEVICES_ONLINE,
                    holder,
                )
                del self._claims[(user_id, device)]
                self._deliver(Evict(user_id, holder))
        if self._degraded:
            self._degraded = False
            # Still degraded if this fails: the next beat tries again.
            with contextlib.suppress(BrokerUnavailable):
                await self._call(self._redis.publish, self._broadcast, RESYNC)
        if self._doubts != doubts:
            self._beat_now.set()  # put in doubt meanwhile: this beat proves too little
        elif self._subscribed.is_set():
            # Only with a live subscription: without one, a second Redis restart would go
            # unnoticed until the next beat. (Subscribing triggers a beat.)
            self._confirm()
        if reset or recreated or lapsed:
            # Wake-ups sent while these leases (or this node's liveness) were missing
            # went nowhere.
            self._deliver(Resync())


def _weight(notice: Notice) -> int:
    """How many single users or groups a notice is for (the metrics' unit)."""
    if isinstance(notice, Wake):
        return len(notice.user_ids)
    if isinstance(notice, GroupWake):
        return len(notice.group_ids)
    return 1
