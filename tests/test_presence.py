"""Presence events (protocol 1.1): friends hear a user come and go, on one node,
across nodes, when a node stops and when a node dies.

The single-node tests run on both stores and both transports. The cluster tests
run on MariaDB and a private Redis; a node that must receive a real signal
(SIGTERM, kill -9) is a ``python -m chat serve`` process, its survivors run
in-process. Waits poll with a deadline; where a test must show that something
does *not* happen, it sends a sentinel message that has to arrive first.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from chat.broker import MemoryBroker, Pause, PresenceChange, PresencePush, Resume
from chat.client import ChatClient
from chat.protocol.messages import Event, PresenceEvent, UserRef
from chat.server import Node
from chat.server.presence import PresenceAnnouncer
from chat.server.router import Router
from chat.store import Window, open_store

from .cluster_support import DEADLINE, cluster_node, dial, make_broker, node_process, two_nodes
from .support import client, drained, login, next_is_sentinel, register
from .ws_support import Connect

STABLE_SECONDS = 3.0
"""The protocol: once a user's presence has been stable this long, each friend's
last event about the user matches it."""


def presence_of(user_id: int, name: str, online: bool) -> dict[str, Any]:
    return {"type": "presence", "user": {"id": user_id, "name": name}, "online": online}


async def next_presence(c: ChatClient, within: float = DEADLINE) -> dict[str, Any]:
    """The next event, which must be a presence event."""
    event = await c.next_event(within)
    assert event["type"] == "presence", event
    return event


async def befriend(c: ChatClient, user_id: int, friend: ChatClient | None = None) -> None:
    """``c`` adds ``user_id``; ``friend`` (that user's client, if logged in) reads its
    ``friend_added``."""
    await c.call("add_friend", user_id=user_id)
    if friend is not None:
        assert (await friend.next_event(DEADLINE))["type"] == "friend_added"


# --- one node, both stores, both transports ---------------------------------------------


async def test_friends_hear_a_login_and_a_logout(connect: Connect) -> None:
    async with connect() as alice, connect() as bob, connect() as carol:
        alice_id = await register(alice, "alice")
        bob_id = await register(bob, "bob")
        carol_id = await register(carol, "carol")
        await login(bob, "bob")
        await befriend(bob, alice_id)
        await login(carol, "carol")  # not alice's friend

        reply = await login(alice, "alice")
        assert reply["friends"] == [{"id": bob_id, "name": "bob", "online": True}]
        assert await next_presence(bob) == presence_of(alice_id, "alice", True)
        await alice.call("logout")
        assert await next_presence(bob) == presence_of(alice_id, "alice", False)
        await login(alice, "alice")
        assert await next_presence(bob) == presence_of(alice_id, "alice", True)

        # bob has read the three events; anything for alice herself or for carol was
        # queued with them, so it would come before these sentinels.
        await next_is_sentinel(alice, alice_id, bob)
        await next_is_sentinel(carol, carol_id, alice)


async def test_changes_while_the_node_is_paused_arrive_when_it_resumes(
    connect: Connect, node: Node
) -> None:
    """While the node is paused (its leases in doubt) sessions write no events; what
    they are told meanwhile is held, only the newest state per friend, and written when
    the node resumes: bob hears that alice is gone, not that she came. (The pause is
    handed to the router the way the broker hands it over.)"""
    async with connect() as bob:
        async with connect() as alice:
            alice_id = await register(alice, "alice")
            await register(bob, "bob")
            await login(bob, "bob")
            await befriend(bob, alice_id)
            node.router.on_notice(Pause("a test"))
            await login(alice, "alice")  # bob is told, while paused
        # alice's connection closed: bob is told she is gone, while still paused.
        with trio.fail_after(DEADLINE):
            while any(s.user and s.user.id == alice_id for s in node.router.sessions()):  # noqa: ASYNC110
                await trio.sleep(0.01)
        await node.presence.drain()
        node.router.on_notice(Resume())
        assert await next_presence(bob) == presence_of(alice_id, "alice", False)
        async with connect() as alice:
            await login(alice, "alice")
            assert await next_presence(bob) == presence_of(alice_id, "alice", True)


async def test_what_a_paused_session_held_is_all_written_however_much(
    connect: Connect, node: Node
) -> None:
    """More held events than the outbox has room for (a user with many friends who all
    changed during a pause): every one is written on resume, none dropped for want of
    room, and a change told right after the resume comes after them."""
    many = node.settings.outbox_frames * 2 + 10
    async with connect() as bob:
        bob_id = await register(bob, "bob")
        await login(bob, "bob")
        node.router.on_notice(Pause("a test"))
        for friend in range(1, many + 1):  # ids no user has: only bob's session matters
            event = PresenceEvent(UserRef(10_000 + friend, f"f{friend}"), True)
            node.router.presence(PresencePush((bob_id,), event, 1))
        node.router.on_notice(Resume())
        later = PresenceEvent(UserRef(20_000, "later"), True)
        node.router.presence(PresencePush((bob_id,), later, 1))
        got = [await next_presence(bob) for _ in range(many + 1)]
        assert [e["user"]["id"] for e in got[:many]] == [10_000 + f for f in range(1, many + 1)]
        assert got[-1] == presence_of(20_000, "later", True)


async def test_friends_hear_a_connection_close(connect: Connect) -> None:
    async with connect() as bob:
        await register(bob, "bob")
        await login(bob, "bob")
        async with connect() as alice:
            alice_id = await register(alice, "alice")
            await befriend(bob, alice_id)
            await login(alice, "alice")
            assert await next_presence(bob) == presence_of(alice_id, "alice", True)
        # alice's connection closed without a logout.
        assert await next_presence(bob) == presence_of(alice_id, "alice", False)


async def test_a_friend_added_after_a_login_hears_later_changes(connect: Connect) -> None:
    async with connect() as alice, connect() as bob, connect() as carol:
        alice_id = await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await register(carol, "carol")
        await login(carol, "carol")
        await befriend(carol, alice_id)
        await befriend(carol, bob_id)
        await login(alice, "alice")
        await login(bob, "bob")
        # carol heard both: the two logins were announced, before alice and bob were
        # friends (so neither heard of the other).
        assert await next_presence(carol) == presence_of(alice_id, "alice", True)
        assert await next_presence(carol) == presence_of(bob_id, "bob", True)
        await befriend(bob, alice_id, alice)
        await alice.call("logout")
        assert await next_presence(bob) == presence_of(alice_id, "alice", False)
        await login(alice, "alice")
        assert await next_presence(bob) == presence_of(alice_id, "alice", True)
        await bob.call("logout")
        assert await next_presence(alice) == presence_of(bob_id, "bob", False)


async def test_a_change_before_a_friendship_is_not_told(connect: Connect) -> None:
    """bob logs in and at once makes alice his friend: her friend_added says he is
    online; however late his login is announced, it is not told to her."""
    async with connect() as alice, connect() as bob:
        alice_id = await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await login(alice, "alice")
        await login(bob, "bob")
        await bob.call("add_friend", user_id=alice_id)
        added = await alice.next_event(DEADLINE)
        assert added["friend"] == {"id": bob_id, "name": "bob", "online": True}, added
        await next_is_sentinel(alice, alice_id, bob)
        await next_is_sentinel(bob, bob_id, alice)


async def test_a_failed_login_announces_nothing(connect: Connect) -> None:
    """A wrong password and ``already_online`` change nobody's presence."""
    async with connect() as alice, connect() as bob, connect() as intruder:
        alice_id = await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await login(bob, "bob")
        await befriend(bob, alice_id)
        await login(alice, "alice")
        assert await next_presence(bob) == presence_of(alice_id, "alice", True)
        for password in ("wrong", "secret"):
            reply = await intruder.request("login", name="alice", password=password)
            assert reply["code"] in ("bad_credentials", "already_online"), reply
        await next_is_sentinel(bob, bob_id, alice)


# --- the announcer alone ----------------------------------------------------------------


class Recorder:
    """Stands in for a user session: what the router hands it."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.events: list[Event] = []

    def push(self, event: Event) -> None:
        self.events.append(event)

    def following(self) -> list[int]:
        return []


async def test_the_announcer_coalesces_steps_and_keeps_the_newest(database_url: str) -> None:
    """A batch: the newest change per user, each friend told every event of the batch
    (here two friends per step), and an older version arriving later is dropped."""
    store = await trio.to_thread.run_sync(open_store, database_url)
    try:
        ann = await store.create_user("ann", "x")
        bob = await store.create_user("bob", "x")
        friends = [await store.create_user(f"friend{i}", "x") for i in range(5)]
        stranger = await store.create_user("stranger", "x")
        window = Window(100, 3_600_000)
        for friend in friends:
            await store.add_friend(ann.id, friend.id, window)
            await store.add_friend(friend.id, bob.id, window)
        router = Router(MemoryBroker("node"))
        sessions = {user.id: Recorder(f"node/{user.id}") for user in [*friends, stranger, ann]}
        for user_id, session in sessions.items():
            router.attach(user_id, session)  # type: ignore[arg-type]
        announcer = PresenceAnnouncer(store, router, fanout_step=2)
        announcer.changed(PresenceChange(ann.id, True, 5))
        announcer.changed(PresenceChange(bob.id, True, 6))
        announcer.changed(PresenceChange(ann.id, False, 7))  # newer: replaces version 5
        announcer.changed(PresenceChange(ann.id, True, 4))  # older: ignored
        async with trio.open_nursery() as nursery:
            await nursery.start(announcer.run)
            await announcer.drain()
            nursery.cancel_scope.cancel()
        told = [
            PresenceEvent(UserRef(ann.id, "ann"), False),
            PresenceEvent(UserRef(bob.id, "bob"), True),
        ]
        for friend in friends:
            assert sessions[friend.id].events == told
        assert sessions[stranger.id].events == []
        assert sessions[ann.id].events == []  # nothing about herself; bob is not her friend
        # Crossing: an older announcement about ann reaches this node late.
        late = PresencePush((friends[0].id,), PresenceEvent(UserRef(ann.id, "ann"), True), 6)
        router.on_notice(late)
        assert sessions[friends[0].id].events == told
    finally:
        store.close()


# --- two nodes -------------------------------------------------------------------------


async def test_presence_crosses_nodes(mysql_url: str, redis_url: str) -> None:
    async with (
        two_nodes(mysql_url, redis_url) as (a, b),
        client(a) as alice,
        client(b) as bob,
        client(a) as carol,
        client(b) as dave,
    ):
        alice_id = await register(alice, "alice")
        await register(bob, "bob")
        await register(carol, "carol")
        dave_id = await register(dave, "dave")  # nobody's friend
        for c, name in [(bob, "bob"), (carol, "carol"), (dave, "dave")]:
            await login(c, name)
        for c in (bob, carol):
            await befriend(c, alice_id)

        await login(alice, "alice")  # on A: bob (on B) and carol (on A) hear it
        for friend in (bob, carol):
            assert await next_presence(friend) == presence_of(alice_id, "alice", True)
        await alice.call("logout")
        for friend in (bob, carol):
            assert await next_presence(friend) == presence_of(alice_id, "alice", False)

        async with client(b) as alice_on_b:
            await login(alice_on_b, "alice")
            for friend in (bob, carol):
                assert await next_presence(friend) == presence_of(alice_id, "alice", True)
        # Her connection to B closed.
        for friend in (bob, carol):
            assert await next_presence(friend) == presence_of(alice_id, "alice", False)

        # dave, alice's friend on neither node, heard nothing (bob, on his node, heard
        # everything before this sentinel left).
        await next_is_sentinel(dave, dave_id, carol)


async def flap(on_a: ChatClient, on_b: ChatClient, times: int, *, end_online: bool) -> None:
    """alice logs in and out as fast as the nodes answer, alternating between them;
    she ends logged in on B, or logged out."""
    for i in range(times):
        c = on_a if i % 2 == 0 else on_b
        await login(c, "alice")
        await c.call("logout")
    if end_online:
        await login(on_b, "alice")


async def test_flapping_across_nodes_ends_with_the_newest_state(
    mysql_url: str, redis_url: str
) -> None:
    async with (
        two_nodes(mysql_url, redis_url) as (a, b),
        client(a) as on_a,
        client(b) as on_b,
        client(a) as carol,
        client(b) as bob,
    ):
        alice_id = await register(on_a, "alice")
        for c, name in [(bob, "bob"), (carol, "carol")]:
            await register(c, name)
            await login(c, name)
            await befriend(c, alice_id)

        for end_online in (True, False):
            await flap(on_a, on_b, 10, end_online=end_online)
            # Stable from now: after 3 s each friend's last event must say so.
            await trio.sleep(STABLE_SECONDS)
            for friend in (bob, carol):
                events = drained(friend)
                assert events, "no presence event at all"
                assert all(e["type"] == "presence" for e in events), events
                assert events[-1] == presence_of(alice_id, "alice", end_online), events
            if end_online:
                await on_b.call("logout")
                for friend in (bob, carol):
                    assert await next_presence(friend) == presence_of(alice_id, "alice", False)


# --- nodes that stop and die -----------------------------------------------------------------


@pytest.mark.slow
async def test_sigterm_announces_the_stopped_nodes_users(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with (
        node_process(mysql_url, redis_url, "node-a", tmp_path) as a,
        cluster_node(mysql_url, make_broker(redis_url, "node-b")) as b,
        dial(a.port) as alice,
        client(b) as bob,
    ):
        alice_id = await register(alice, "alice")
        await register(bob, "bob")
        await login(bob, "bob")
        await befriend(bob, alice_id)
        await login(alice, "alice")
        assert await next_presence(bob) == presence_of(alice_id, "alice", True)

        started = trio.current_time()
        assert await a.stop(signal.SIGTERM, within=15) == 0, a.log_tail()
        assert await next_presence(bob) == presence_of(alice_id, "alice", False)
        took = trio.current_time() - started
        # Released before the process exits: no lease to wait for.
        assert took < DEADLINE, took


@pytest.mark.slow
async def test_kill_9_announces_the_dead_nodes_users_once(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Two survivors watch: each friend hears alice leave exactly once, within the
    protocol's 20 s (the tests' leases are 3 s), and then hears her come back."""
    async with (
        node_process(mysql_url, redis_url, "node-a", tmp_path) as a,
        cluster_node(mysql_url, make_broker(redis_url, "node-b")) as b,
        cluster_node(mysql_url, make_broker(redis_url, "node-c")) as c,
        dial(a.port) as alice,
        client(b) as bob,
        client(c) as carol,
    ):
        alice_id = await register(alice, "alice")
        for friend, name in [(bob, "bob"), (carol, "carol")]:
            await register(friend, name)
            await login(friend, name)
            await befriend(friend, alice_id)
        await login(alice, "alice")
        for friend in (bob, carol):
            assert await next_presence(friend) == presence_of(alice_id, "alice", True)

        started = trio.current_time()
        assert await a.stop(signal.SIGKILL, within=15) == -signal.SIGKILL
        for friend in (bob, carol):
            assert await next_presence(friend, 20.0) == presence_of(alice_id, "alice", False)
        assert trio.current_time() - started < 20.0
        assert "stopped" not in a.log_tail()  # it really died without its shutdown

        # Exactly once: both survivors look for dead nodes every second. Nothing can be
        # sent that would have to arrive after a second announcement, so wait.
        await trio.sleep(2.5)
        for friend in (bob, carol):
            assert drained(friend) == []

        async with client(b) as again:
            await login(again, "alice")
            for friend in (bob, carol):
                assert await next_presence(friend) == presence_of(alice_id, "alice", True)
