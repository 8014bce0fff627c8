"""The Redis broker alone: device leases, routing between nodes, dead nodes, lost data.

Each test drives ``RedisBroker`` objects directly (several of them play the nodes of
one cluster) against the module's private redis-server (``redis_server`` in
conftest.py), each test on a Redis database of its own. Leases are short (seconds),
so that a lapse or a dead node takes a second or two. Waits poll with a deadline;
where a test must show that something does *not* happen, something that has to come
after it is awaited first (a sentinel, or the dead node's list being gone).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import redis
import trio
import trio.testing

from chat.broker import (
    MAX_DEVICES_ONLINE,
    Evict,
    GroupWake,
    Notice,
    Pause,
    PresenceChange,
    PresencePush,
    Push,
    Resume,
    Resync,
    Wake,
)
from chat.broker.redis import RedisBroker, device_name, device_token
from chat.broker.wire import decode_notices, encode_notices
from chat.protocol.messages import FriendAddedEvent, PresenceEvent, UserPresence, UserRef

from .cluster_support import RedisServer

DEADLINE = 10.0
"""Generous: only bounds waits that poll, on a machine that may be loaded."""
LEASE = 2.0
"""Leases of the nodes that live through a test (a heartbeat every 0.67 s)."""
SHORT_LEASE = 1.0
"""The lease of a node that a test lets die: its devices are free a second later."""
REAP = 0.1
"""How often the nodes look for dead ones."""

FRIEND = FriendAddedEvent(UserPresence(2, "ann", True))
"""Some event to push."""


class Heard:
    """What one broker handed its handler, and a way to wait for more."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []
        self._changed = trio.Event()

    def __call__(self, notice: Notice) -> None:
        self.notices.append(notice)
        self._changed.set()
        self._changed = trio.Event()

    def of(self, *kinds: type[Any]) -> list[Notice]:
        return [notice for notice in self.notices if isinstance(notice, kinds)]

    def changes(self, user_id: int) -> list[PresenceChange]:
        return [n for n in self.notices if isinstance(n, PresenceChange) and n.user_id == user_id]

    async def until(self, check: Callable[[], object]) -> None:
        with trio.fail_after(DEADLINE):
            while not check():
                await self._changed.wait()


@attrs.define
class Node:
    """A broker running as one node of the test's cluster."""

    broker: RedisBroker
    heard: Heard
    scope: trio.CancelScope

    def kill(self) -> None:
        """Stop it the way ``kill -9`` would: no release, no goodbye; its heartbeat and
        subscription end, its leases and liveness run out."""
        self.scope.cancel()


async def _serve(
    broker: RedisBroker,
    heard: Heard,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await broker.run(heard, task_status=task_status)


@asynccontextmanager
async def node(
    url: str, node_id: str, *, lease: float = LEASE, **options: Any
) -> AsyncIterator[Node]:
    broker = RedisBroker(url, node_id, lease_seconds=lease, reap_seconds=REAP, **options)
    heard, scope = Heard(), trio.CancelScope()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_serve, broker, heard, scope)
            yield Node(broker, heard, scope)
            scope.cancel()
    finally:
        with trio.move_on_after(5, shield=True):
            await broker.aclose()


def direct(url: str) -> redis.Redis:
    """A plain client on the test's database, to look at (or spoil) what the brokers keep."""
    return redis.Redis.from_url(url)


async def command(client: redis.Redis, *args: Any) -> Any:
    return await trio.to_thread.run_sync(client.execute_command, *args)


# --- devices of one user ------------------------------------------------------------


async def test_two_devices_are_one_presence(redis_url: str) -> None:
    async with node(redis_url, "node-a") as a, node(redis_url, "node-b") as b:
        assert await a.broker.claim(1, "phone", "node-a/1")
        (online,) = a.heard.changes(1)
        assert online.online
        # A second device, on another node: the user was online already.
        assert await b.broker.claim(1, "laptop", "node-b/1")
        assert b.heard.changes(1) == []
        assert a.heard.changes(1) == [online]
        # The first device goes: the laptop keeps the user online.
        await a.broker.release(1, "phone", "node-a/1")
        assert a.heard.changes(1) == [online]
        assert await a.broker.locate([1]) == {1: frozenset({"node-b"})}
        # The last one goes: offline, announced by the node that saw it, newer.
        await b.broker.release(1, "laptop", "node-b/1")
        (offline,) = b.heard.changes(1)
        assert not offline.online
        assert offline.version > online.version
        assert a.heard.changes(1) == [online]
        assert await a.broker.locate([1]) == {}
        # And back: online again, with a newer version still.
        assert await b.broker.claim(1, "laptop", "node-b/2")
        assert b.heard.changes(1)[-1].online
        assert b.heard.changes(1)[-1].version > offline.version


async def test_a_device_has_one_holder(redis_url: str) -> None:
    async with node(redis_url, "node-a") as a, node(redis_url, "node-b") as b:
        assert await a.broker.claim(1, "phone", "node-a/1")
        # Another connection wants the same device: on another node or on this one.
        assert not await b.broker.claim(1, "phone", "node-b/1")
        assert not await a.broker.claim(1, "phone", "node-a/2")
        # The holder claiming again (a retried command) succeeds, and changes nothing.
        assert await a.broker.claim(1, "phone", "node-a/1")
        assert len(a.heard.changes(1)) == 1
        assert await b.broker.devices(1) == {"phone": "node-a"}
        # A release by a connection that never held the device frees nothing.
        await b.broker.release(1, "phone", "node-b/1")
        assert await b.broker.devices(1) == {"phone": "node-a"}
        # Another device of the same user is another lease.
        assert await b.broker.claim(1, "tablet", "node-b/2")
        # Closing a broker releases its own leases and nobody else's.
        await a.broker.aclose()
        assert await b.broker.devices(1) == {"tablet": "node-b"}
        assert await b.broker.claim(1, "phone", "node-b/3")


async def test_a_late_release_frees_nothing_of_a_newer_login(redis_url: str) -> None:
    """A's lease on the phone lapsed and B logged the phone in; A's session, closing
    late, releases: the compare-and-delete in Redis must leave B's lease alone. (Long
    leases: no heartbeat of A's comes in between to evict the session first.)"""
    async with (
        node(redis_url, "node-a", lease=30.0) as a,
        node(redis_url, "node-b", lease=30.0) as b,
    ):
        assert await a.broker.claim(1, "phone", "node-a/1")
        client = direct(redis_url)
        try:
            await command(client, "DEL", a.broker.lease_key(1, "phone"))  # it lapsed
        finally:
            client.close()
        assert await b.broker.claim(1, "phone", "node-b/1")
        await a.broker.release(1, "phone", "node-a/1")
        assert await a.broker.devices(1) == {"phone": "node-b"}
        # The phone never went offline, so nobody announced anything about user 1 but
        # its first login.
        assert len(a.heard.changes(1)) == 1
        assert b.heard.changes(1) == []


async def test_a_device_taken_over_after_a_lapse_evicts_its_old_connection(
    redis_url: str,
) -> None:
    async with node(redis_url, "node-a") as a, node(redis_url, "node-b") as b:
        assert await a.broker.claim(1, "phone", "node-a/1")
        assert await a.broker.claim(1, "laptop", "node-a/2")
        phone = a.broker.lease_key(1, "phone")
        client = direct(redis_url)
        try:
            # The phone's lease lapses and B logs the phone in (A's heartbeat may
            # re-create the lease in between: then again).
            with trio.fail_after(DEADLINE):
                while True:
                    await command(client, "DEL", phone)
                    if await b.broker.claim(1, "phone", "node-b/1"):
                        break
        finally:
            client.close()
        # A's next heartbeat finds the phone held by B: that connection only is closed.
        await a.heard.until(lambda: a.heard.of(Evict))
        assert a.heard.of(Evict) == [Evict(1, "node-a/1")]
        assert await a.broker.devices(1) == {"phone": "node-b", "laptop": "node-a"}
        # The user stayed online throughout: one announcement, the first login's.
        assert [change.online for change in a.heard.changes(1)] == [True]
        assert b.heard.changes(1) == []


async def test_a_device_logged_in_again_on_the_same_node_evicts_the_old_connection(
    redis_url: str,
) -> None:
    async with node(redis_url, "node-a") as a:
        assert await a.broker.claim(1, "phone", "node-a/1")
        client = direct(redis_url)
        try:
            # The lease lapses and a new connection on the same node logs the phone in.
            with trio.fail_after(DEADLINE):
                while True:
                    await command(client, "DEL", a.broker.lease_key(1, "phone"))
                    if await a.broker.claim(1, "phone", "node-a/2"):
                        break
        finally:
            client.close()
        assert a.heard.of(Evict) == [Evict(1, "node-a/1")]
        # The old connection's release, when it closes, leaves the new one alone.
        await a.broker.release(1, "phone", "node-a/1")
        assert await a.broker.devices(1) == {"phone": "node-a"}
        await a.broker.release(1, "phone", "node-a/2")
        assert await a.broker.devices(1) == {}
        assert [change.online for change in a.heard.changes(1)] == [True, False]


async def test_at_most_ten_devices_are_online(redis_url: str) -> None:
    assert MAX_DEVICES_ONLINE == 10
    async with node(redis_url, "node-a") as a, node(redis_url, "node-b") as b:
        for i in range(5):
            assert await a.broker.claim(1, f"a{i}", f"node-a/{i}")
            assert await b.broker.claim(1, f"b{i}", f"node-b/{i}")
        assert len(await a.broker.devices(1)) == 10
        assert not await a.broker.claim(1, "eleventh", "node-a/10")
        assert not await b.broker.claim(1, "eleventh", "node-b/10")
        # One of the ten already there may claim again; another user is not affected.
        assert await a.broker.claim(1, "a0", "node-a/0")
        assert await a.broker.claim(2, "eleventh", "node-a/11")
        # One logs out: the eleventh fits now.
        await b.broker.release(1, "b0", "node-b/0")
        assert await a.broker.claim(1, "eleventh", "node-a/12")
        assert not await b.broker.claim(1, "twelfth", "node-b/12")
        # Only leases that stand count: one that lapsed leaves room (B's heartbeat may
        # re-create it in between: then again).
        client = direct(redis_url)
        try:
            with trio.fail_after(DEADLINE):
                while True:
                    await command(client, "DEL", b.broker.lease_key(1, "b1"))
                    if await b.broker.claim(1, "twelfth", "node-b/13"):
                        break
        finally:
            client.close()
        assert len(await a.broker.devices(1)) == 10
        # B cannot re-create the lapsed lease now: ten others are online, so that
        # connection ends.
        await b.heard.until(lambda: b.heard.of(Evict))
        assert b.heard.of(Evict) == [Evict(1, "node-b/1")]
        assert "b1" not in await a.broker.devices(1)
        # The user came online once, whatever came and went after.
        assert len(a.heard.changes(1)) == 1
        assert b.heard.changes(1) == []


async def test_locate_and_devices_cover_every_node(redis_url: str) -> None:
    names = ["lap:top@home", "", "\U0001f600 phone", "x" * 64]
    async with node(redis_url, "node-a") as a, node(redis_url, "node-b") as b:
        assert await a.broker.claim(1, names[0], "node-a/1")
        assert await b.broker.claim(1, names[1], "node-b/1")
        assert await b.broker.claim(1, names[2], "node-b/2")
        assert await b.broker.claim(2, names[3], "node-b/3")
        assert await a.broker.locate([1, 2, 3, 1]) == {
            1: frozenset({"node-a", "node-b"}),
            2: frozenset({"node-b"}),
        }
        assert await b.broker.devices(1) == {
            names[0]: "node-a",
            names[1]: "node-b",
            names[2]: "node-b",
        }
        assert await a.broker.devices(2) == {names[3]: "node-b"}
        assert await a.broker.devices(3) == {}
        # ':' and '@' in a device name are not the key's or the lease's separators.
        assert await a.broker.claim(1, "lap", "node-a/4")
        assert await a.broker.claim(1, "lap:top", "node-a/5")
        assert await a.broker.claim(11, "phone", "node-a/6")  # not user 1's
        assert (await b.broker.devices(1)).keys() == {*names[:3], "lap", "lap:top"}
        await a.broker.release(1, names[0], "node-a/1")
        assert await b.broker.locate([1]) == {1: frozenset({"node-a", "node-b"})}
        await a.broker.release(1, "lap", "node-a/4")
        await a.broker.release(1, "lap:top", "node-a/5")
        assert await b.broker.locate([1]) == {1: frozenset({"node-b"})}


# --- routing ----------------------------------------------------------------------------


def routed(heard: Heard) -> list[Notice]:
    """What route calls handed this node (not its own Resyncs, Pauses and the like)."""
    return heard.of(Wake, GroupWake, Push, PresencePush)


async def test_route_reaches_every_node_of_a_user_and_keeps_skip(redis_url: str) -> None:
    async with (
        node(redis_url, "node-a") as a,
        node(redis_url, "node-b") as b,
        node(redis_url, "node-c") as c,
    ):
        assert await a.broker.claim(1, "phone", "node-a/1")
        assert await b.broker.claim(1, "laptop", "node-b/1")
        assert await b.broker.claim(2, "phone", "node-b/2")
        event = PresenceEvent(UserRef(9, "zed"), True)
        await c.broker.route(
            [1, 2, 3],
            [Push(1, FRIEND, skip="node-a/1"), Push(2, FRIEND), Push(3, FRIEND)],
            [PresencePush((1, 2, 3), event, 77)],
        )
        await b.heard.until(lambda: routed(b.heard))
        assert routed(b.heard) == [
            Wake((1, 2)),
            Push(1, FRIEND, skip="node-a/1"),
            Push(2, FRIEND),
            PresencePush((1, 2), event, 77),
        ]
        await a.heard.until(lambda: routed(a.heard))
        assert routed(a.heard) == [
            Wake((1,)),
            Push(1, FRIEND, skip="node-a/1"),
            PresencePush((1,), event, 77),
        ]
        # Node C, which routed them, holds none of these users: its own call handed it
        # nothing. Group wake-ups reach it all the same.
        assert routed(c.heard) == []
        await a.broker.route([], [], groups=[5])
        await c.heard.until(lambda: routed(c.heard))
        assert routed(c.heard) == [GroupWake((5,))]
        # The routing node's own sessions are the router's to reach: nothing comes back
        # to it, and user 1's other node gets its share, in order.
        before = len(routed(a.heard))
        await a.broker.route([1], [Push(1, FRIEND, skip="node-b/1")], groups=[6])
        await b.heard.until(lambda: GroupWake((6,)) in routed(b.heard))
        assert routed(b.heard)[-3:] == [
            Wake((1,)),
            GroupWake((6,)),
            Push(1, FRIEND, skip="node-b/1"),
        ]
        # A sentinel from B to A: what A heard before it is all A was ever sent.
        await b.broker.route([], [], groups=[99])
        await a.heard.until(lambda: GroupWake((99,)) in routed(a.heard))
        assert routed(a.heard)[before:] == [GroupWake((99,))]
        assert b.broker.notices_received >= 5


class Subscriber:
    """A bare pub/sub connection on one node's channel: what was published there."""

    def __init__(self, url: str, channel: str) -> None:
        self.client = direct(url)
        self.channel = channel
        self.pubsub = self.client.pubsub()

    def subscribe(self) -> None:
        self.pubsub.subscribe(self.channel)
        message = self.pubsub.get_message(timeout=DEADLINE)
        assert message is not None and message["type"] == "subscribe", message

    def until_sentinel(self) -> list[bytes]:
        """Publish a sentinel on the channel; every message that came before it."""
        sentinel = b"sentinel " + self.channel.encode()
        self.client.publish(self.channel, sentinel)
        seen: list[bytes] = []
        while True:
            message = self.pubsub.get_message(timeout=DEADLINE)
            assert message is not None, "the sentinel did not come"
            if message["type"] != "message":
                continue
            if message["data"] == sentinel:
                return seen
            seen.append(message["data"])

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


async def test_group_wakes_reach_every_live_node_in_one_message(redis_url: str) -> None:
    """A, B and two nodes that are only entries in Redis and a pub/sub connection each:
    Z, alive (its liveness key stands), and Y, dead (listed, but its liveness lapsed).
    A route call with group wake-ups hands them to B, and to Z in the same message as
    Z's wake-ups and pushes, in order; Y gets nothing, and neither does A itself (its
    router reaches its own sessions)."""
    async with node(redis_url, "node-a") as a, node(redis_url, "node-b") as b:
        prefix = a.broker.prefix
        z = Subscriber(redis_url, a.broker.channel_of("node-z"))
        y = Subscriber(redis_url, a.broker.channel_of("node-y"))
        client = direct(redis_url)
        try:
            for listener in (z, y):
                await trio.to_thread.run_sync(listener.subscribe)
            await command(client, "SADD", f"{prefix}:nodes", "node-z@1", "node-y@1")
            await command(client, "SET", f"{prefix}:alive:node-z@1", "1", "PX", 60_000)
            # User 5 has a device on node Z.
            await command(client, "SET", a.broker.lease_key(5, "d"), "node-z/1@1", "PX", 60_000)
            await command(client, "SADD", a.broker.devices_key(5), device_token("d"))
            event = PresenceEvent(UserRef(9, "zed"), False)
            await a.broker.route(
                [5],
                [Push(5, FRIEND, skip="node-z/1")],
                [PresencePush((5,), event, 3)],
                groups=[7, 8],
            )
            (message,) = await trio.to_thread.run_sync(z.until_sentinel)
            assert decode_notices(message) == [
                Wake((5,)),
                GroupWake((7, 8)),
                Push(5, FRIEND, skip="node-z/1"),
                PresencePush((5,), event, 3),
            ]
            assert await trio.to_thread.run_sync(y.until_sentinel) == []
        finally:
            client.close()
            z.close()
            y.close()
        await b.heard.until(lambda: routed(b.heard))
        assert routed(b.heard) == [GroupWake((7, 8))]
        await b.broker.route([], [], groups=[99])  # a sentinel for A
        await a.heard.until(lambda: routed(a.heard))
        assert routed(a.heard) == [GroupWake((99,))]
        # B: two groups; Z: two groups, a wake-up, a push and a presence item.
        assert a.broker.notices_sent == 2 + (2 + 1 + 1 + 1)


def test_notices_survive_the_wire() -> None:
    event = PresenceEvent(UserRef(7, "ann"), False)
    pushes = [
        Push(3, FriendAddedEvent(UserPresence(1, "ann", True))),
        Push(1, FriendAddedEvent(UserPresence(2, "\u00e9\U0001f600", False)), skip="n\u00e9/7"),
    ]
    presence = PresencePush((3, 4), event, 1_764_520_000_123_456)
    everything = encode_notices([1, 2], pushes, [presence], groups=[5, 6])
    assert decode_notices(everything) == [Wake((1, 2)), GroupWake((5, 6)), *pushes, presence]
    assert decode_notices(encode_notices(groups=[9])) == [GroupWake((9,))]
    assert decode_notices(encode_notices([7])) == [Wake((7,))]
    assert decode_notices(b'{"resync":true}') == [Resync()]
    # A push that skips nobody travels as two items; one that skips, as three.
    assert [len(item) for item in json.loads(everything)["push"]] == [2, 3]
    # An event this node cannot read costs that event, not the wake-ups beside it.
    unreadable = b'{"wake": [4], "push": [[1, "{\\"type\\": \\"from_the_future\\"}", "x"]]}'
    assert decode_notices(unreadable) == [Wake((4,))]
    unreadable = b'{"wake":[4],"presence":[[5,"{\\"type\\":\\"presence\\",\\"user\\":1}",[3]]]}'
    assert decode_notices(unreadable) == [Wake((4,))]
    for junk in [
        b"",
        b"[]",
        b"{}",
        b'{"wake": [0]}',
        b'{"wake": [true]}',
        b'{"wake": []}',
        b'{"groups": []}',
        b'{"groups": [-1]}',
        b'{"groups": 5}',
        b'{"push": 1}',
        b'{"push": [[1]]}',
        b'{"push": [[1, 2]]}',
        b'{"push": [[1, "{}", 3]]}',
        b'{"push": [[1, "{}", "a", "b"]]}',
        b'{"push": [[1, "{\\"type\\": \\"nonsense\\"}"]]}',
        b'{"presence":[[0,"{}",[3]]]}',
        b'{"presence":[[5,"{}",[]]]}',
        b'{"wake": [1], "what": 2}',
        b"\xff",
    ]:
        assert decode_notices(junk) == [], junk


def test_device_names_are_safe_in_keys() -> None:
    names = ["", ":", "@", "a:b@c", "\U0001f600", "\u00e9" * 64, "\ud800 lone"]
    tokens = [device_token(name) for name in names]
    assert tokens[0] == ""
    assert all(set(token) <= set("0123456789abcdef") for token in tokens)
    assert len(set(tokens)) == len(names)
    assert [device_name(token) for token in tokens] == names
    assert device_name(tokens[3].encode()) == names[3]


# --- nodes that die, Redis that loses its data --------------------------------------


async def test_a_dead_nodes_devices_go_and_only_a_last_device_takes_its_user(
    redis_url: str,
) -> None:
    """A dies with user 1's only device and one of user 2's two devices (the other is
    on B). B finds them gone once their leases ran out: user 1 goes offline, user 2
    stays online."""
    async with node(redis_url, "node-b") as b:
        async with node(redis_url, "node-a", lease=SHORT_LEASE) as a:
            assert await a.broker.claim(1, "phone", "node-a/1")
            assert await a.broker.claim(2, "phone", "node-a/2")
            assert await b.broker.claim(2, "laptop", "node-b/1")
            (online,) = a.heard.changes(1)
            dead = a.broker.process_name
            a.kill()
            await b.heard.until(lambda: b.heard.changes(1))
            (offline,) = b.heard.changes(1)
            assert not offline.online
            assert offline.version > online.version
            # B forgets the dead process once it has dealt with each of its devices.
            client = direct(redis_url)
            try:
                nodes = f"{b.broker.prefix}:nodes"
                with trio.fail_after(DEADLINE):
                    while True:
                        if not await command(client, "SISMEMBER", nodes, dead):
                            break
                        await trio.sleep(REAP)
            finally:
                client.close()
            assert b.heard.changes(2) == []
            assert await b.broker.locate([1, 2]) == {2: frozenset({"node-b"})}
            assert await b.broker.devices(2) == {"laptop": "node-b"}
            # The dead node's device is free for another login.
            assert await b.broker.claim(1, "phone", "node-b/2")
            assert b.heard.changes(1)[-1].online
        # Its last device goes: user 2 is offline now, and that is newer than the rest.
        await b.broker.release(2, "laptop", "node-b/1")
        (gone,) = b.heard.changes(2)
        assert not gone.online
        assert gone.version > b.heard.changes(1)[-1].version


async def test_a_node_that_stops_frees_its_devices_and_the_survivors_announce(
    redis_url: str,
) -> None:
    """A stops cleanly with devices its sessions did not release: they are free at
    once, and B announces the user whose only device that was (A's routing is gone)."""
    async with node(redis_url, "node-b") as b:
        async with node(redis_url, "node-a") as a:
            assert await a.broker.claim(3, "phone", "node-a/1")
            assert await a.broker.claim(4, "phone", "node-a/2")
            assert await b.broker.claim(4, "laptop", "node-b/1")
        assert await b.broker.locate([3, 4]) == {4: frozenset({"node-b"})}
        await b.heard.until(lambda: b.heard.changes(3))
        assert [change.online for change in b.heard.changes(3)] == [False]
        # User 4 stays online; its other device is free for a login on B.
        assert await b.broker.claim(4, "phone", "node-b/2")
        # B dealt with A's whole list in the look that announced user 3, and said
        # nothing about user 4 (A's phone was not its last device) until now:
        await b.broker.release(4, "laptop", "node-b/1")
        await b.broker.release(4, "phone", "node-b/2")
        assert [change.online for change in b.heard.changes(4)] == [False]


async def test_a_flush_recreates_the_leases_and_announces_each_user_once(
    redis_url: str,
) -> None:
    async with node(redis_url, "node-a") as a:
        assert await a.broker.claim(1, "phone", "node-a/1")
        assert await a.broker.claim(1, "laptop", "node-a/2")
        assert await a.broker.claim(2, "phone", "node-a/3")
        before = len(a.heard.notices)
        client = direct(redis_url)
        try:
            await command(client, "FLUSHDB")
        finally:
            client.close()
        # The next heartbeat finds the epoch gone, tells every node, and re-creates.
        await a.heard.until(lambda: len(a.heard.changes(2)) == 2)
        assert await a.broker.devices(1) == {"phone": "node-a", "laptop": "node-a"}
        assert [change.online for change in a.heard.changes(1)] == [True, True]
        assert Resync() in a.heard.notices[before:]
        # Its own leases: nobody is evicted.
        assert a.heard.of(Evict) == []


async def test_resume_names_the_holders_whose_leases_were_recreated(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Redis restarts empty: the node pauses, re-creates its device leases when Redis is
    back, and resumes, naming each connection whose lease had to be made anew."""
    async with node(redis_url, "node-a") as a:
        assert await a.broker.claim(1, "phone", "node-a/1")
        assert await a.broker.claim(1, "laptop", "node-a/2")
        assert await a.broker.claim(2, "phone", "node-a/3")
        await a.broker.release(2, "phone", "node-a/3")
        assert await a.broker.claim(2, "", "node-a/4")
        before = len(a.heard.notices)
        await redis_server.restart(down_seconds=0.2)
        await a.heard.until(lambda: [n for n in a.heard.notices[before:] if isinstance(n, Resume)])
        after = a.heard.notices[before:]
        assert any(isinstance(n, Pause) for n in after)
        (resume,) = [n for n in after if isinstance(n, Resume)]
        assert resume.recreated == {"node-a/1", "node-a/2", "node-a/4"}
        assert after.index(resume) > next(i for i, n in enumerate(after) if isinstance(n, Pause))
        assert await a.broker.devices(1) == {"phone": "node-a", "laptop": "node-a"}
        assert await a.broker.devices(2) == {"": "node-a"}


async def test_a_release_while_a_beat_runs_recreates_nothing(redis_url: str) -> None:
    """The cause of "leases had lapsed and were re-created" under login/logout churn: a
    beat reads the node's leases, a session ends and releases its lease before the
    beat's renewal reaches Redis, and the renewal found the lease missing and made it
    again (announcing the user online again, then offline). Here the beat is held at
    its limiter after reading the leases, while the release runs."""
    async with node(redis_url, "node-a") as a:
        assert await a.broker.claim(1, "phone", "node-a/1")
        assert await a.broker.claim(2, "phone", "node-a/2")
        async with trio.open_nursery() as nursery, a.broker._beat_limiter:
            nursery.start_soon(a.broker._beat)
            await trio.testing.wait_all_tasks_blocked()
            await a.broker.release(1, "phone", "node-a/1")
        assert [change.online for change in a.heard.changes(1)] == [True, False]
        assert a.broker.leases_recreated == 0
        assert await a.broker.devices(1) == {}
        # The other lease was renewed as usual.
        assert await a.broker.devices(2) == {"phone": "node-a"}
        client = direct(redis_url)
        try:
            ttl = await command(client, "PTTL", a.broker.lease_key(2, "phone"))
        finally:
            client.close()
        assert ttl > LEASE * 1000 * 0.5


async def test_a_lapsed_lease_still_listed_is_recreated(redis_url: str) -> None:
    """A lease that lapsed (its beat came late) while the node still lists it is made
    again by the next beat: only released ones are left alone."""
    async with node(redis_url, "node-a") as a:
        assert await a.broker.claim(1, "phone", "node-a/1")
        client = direct(redis_url)
        try:
            await command(client, "DEL", a.broker.lease_key(1, "phone"))
        finally:
            client.close()
        await a.broker._beat()
        assert a.broker.leases_recreated == 1
        assert await a.broker.devices(1) == {"phone": "node-a"}
        assert a.heard.of(Evict) == []
