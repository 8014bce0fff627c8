"""The cluster: nodes on the Redis broker, with real MariaDB, Redis and nginx.

Each test gets a MariaDB database and a Redis database of its own; the module
runs one private redis-server (restarted by the Redis-restart test). Nodes run
in-process where that suffices and as ``python -m chat serve`` processes where a
signal must reach a real process (SIGTERM, kill -9). Waits poll for the awaited
state with a deadline; nothing asserts how fast anything is.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from chat.broker import Evict, Pause, PresencePush, Resume
from chat.broker.redis import RedisBroker
from chat.client import ChatClient
from chat.protocol.messages import PresenceEvent, UserRef
from chat.server import Node

from .cluster_support import (
    DEADLINE,
    RedisServer,
    Tally,
    cluster_node,
    dial,
    freezable_proxy,
    make_broker,
    nginx_proxy,
    node_process,
    receive,
    two_nodes,
)
from .support import client, drained, login, mysql_database, no_event, register


async def login_when_free(c: ChatClient, name: str) -> dict[str, Any]:
    """Log in, retrying while the user is still held elsewhere (a lease to expire)."""
    with trio.fail_after(DEADLINE):
        while True:
            reply = await c.request("login", name=name, password="secret")
            if reply["type"] == "ok":
                return reply
            assert reply["code"] in ("already_online", "unavailable"), reply
            await trio.sleep(0.2)


def logged_in(node: Node) -> set[str]:
    return {s.user.name for s in node.router.sessions() if s.user is not None}


# --- the broker alone -----------------------------------------------------------------


# The leases and the wire format: tests/test_redis_broker.py.


def test_bad_redis_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="redis://"):
        RedisBroker("http://127.0.0.1:6379/0", "node-a")


# --- chat across nodes ----------------------------------------------------------------


async def test_cross_node_chat(mysql_url: str, redis_url: str) -> None:
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as alice, client(b) as bob:
        alice_id = await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await login(alice, "alice")
        await login(bob, "bob")

        found = await alice.call("find_user", name="bob")
        assert found["user"]["online"] is True  # online on the other node
        added = await alice.call("add_friend", user_id=bob_id)
        assert added["friend"]["online"] is True
        event = await receive(bob, "friend_added")
        assert event["friend"] == {"id": alice_id, "name": "alice", "online": True}

        sent = await alice.call("send", to=bob_id, text="hi bob")
        event = await receive(bob, "message")
        assert (event["message_id"], event["text"], event["offline"]) == (
            sent["message_id"],
            "hi bob",
            False,
        )
        await bob.call("send", to=alice_id, text="hi alice")
        assert (await receive(alice, "message"))["text"] == "hi alice"

        # Friends' online flags at login reflect the whole cluster; bob, her friend, is
        # told that she left (from A) and came back (from B).
        await alice.call("logout")
        assert (await receive(bob, "presence"))["online"] is False
        async with client(b) as alice_again:
            reply = await login(alice_again, "alice")
            assert reply["friends"] == [{"id": bob_id, "name": "bob", "online": True}]
            assert (await receive(bob, "presence"))["online"] is True
        assert (await receive(bob, "presence"))["online"] is False
        await no_event(bob)


async def test_group_fan_out_across_nodes(mysql_url: str, redis_url: str) -> None:
    async with (
        two_nodes(mysql_url, redis_url) as (a, b),
        client(a) as alice,
        client(b) as bob,
        client(a) as carol,
        client(b) as dave,
    ):
        for c, name in [(alice, "alice"), (bob, "bob"), (carol, "carol"), (dave, "dave")]:
            await register(c, name)
            await login(c, name)
        group = (await alice.call("create_group", name="ops"))["group"]["id"]
        for member in (bob, carol, dave):
            await member.call("join_group", group_id=group)
        sent = [
            (await alice.call("group_send", group_id=group, text=f"m{i}"))["message_id"]
            for i in range(5)
        ]
        for member in (bob, carol, dave):
            got = [(await receive(member, "group_message"))["message_id"] for _ in sent]
            assert got == sent
        for c in (alice, bob, carol, dave):
            await no_event(c)


async def test_offline_delivery_across_nodes(mysql_url: str, redis_url: str) -> None:
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as alice:
        alice_id = await register(alice, "alice")
        async with client(b) as bob:
            bob_id = await register(bob, "bob")
        await login(alice, "alice")
        sent = [
            (await alice.call("send", to=bob_id, text=f"while away {i}"))["message_id"]
            for i in range(3)
        ]
        async with client(b) as bob:
            reply = await login(bob, "bob")
            assert reply["offline"] == 3
            events = [await receive(bob, "message") for _ in sent]
            assert [e["message_id"] for e in events] == sent
            assert all(e["offline"] for e in events)
            assert all(e["from"]["id"] == alice_id for e in events)
            await no_event(bob)


async def test_duplicate_login_across_nodes(mysql_url: str, redis_url: str) -> None:
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as first:
        bob_id = await register(first, "bob")
        await login(first, "bob")
        async with client(b) as second:
            for fields in ({"name": "bob"}, {"id": bob_id}):
                reply = await second.request("login", password="secret", **fields)
                assert reply["code"] == "already_online", reply
            # A logout frees the user at once, for any node.
            await first.call("logout")
            await login(second, "bob")
            reply = await first.request("login", name="bob", password="secret")
            assert reply["code"] == "already_online", reply


async def test_recipient_moving_between_nodes(mysql_url: str, redis_url: str) -> None:
    """Messages keep coming while the recipient hops from node to node: each arrives
    exactly once, in the order sent."""
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as alice:
        await register(alice, "alice")
        async with client(b) as c:
            bob_id = await register(c, "bob")
        await login(alice, "alice")
        sent: list[int] = []
        done = trio.Event()

        async def sender() -> None:
            for i in range(60):
                sent.append((await alice.call("send", to=bob_id, text=f"{i}"))["message_id"])
                await trio.sleep(0.01)
            done.set()

        got: list[int] = []

        async def hop(node: Node, *, until_done: bool) -> None:
            async with client(node) as bob:
                reply = await login(bob, "bob")
                offline = reply["offline"]
                got.extend([(await receive(bob, "message"))["message_id"] for _ in range(offline)])
                if until_done:
                    with trio.fail_after(DEADLINE):
                        while len(got) < len(sent) or not done.is_set():
                            got.append((await receive(bob, "message"))["message_id"])
                else:
                    await trio.sleep(0.15)
                    await bob.call("logout")
                    while True:  # whatever came before the logout reply
                        try:
                            got.append(bob.events.receive_nowait()["message_id"])
                        except trio.WouldBlock:
                            break

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            for node in [a, b, a, b, a]:
                await hop(node, until_done=False)
            await hop(b, until_done=True)
        assert got == sent


async def test_lapsed_lease_closes_the_stale_connection(mysql_url: str, redis_url: str) -> None:
    """If a node's lease lapsed (it could not renew it in time) and someone else holds
    the user now, the node closes its connection: the user is never served twice."""
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as stale:
        bob_id = await register(stale, "bob")
        await login(stale, "bob")
        # What a lapse followed by a login elsewhere leaves in Redis.
        key, elsewhere = make_broker(redis_url, "probe").lease_key(bob_id, ""), "node-z/1"
        direct = redis.Redis.from_url(redis_url)
        try:
            await trio.to_thread.run_sync(direct.set, key, elsewhere)
            with trio.fail_after(DEADLINE):
                await stale.closed.wait()
            assert logged_in(a) == set()
            # Closing released nothing of the new holder's.
            assert await b.services.broker.locate([bob_id]) == {bob_id: frozenset({"node-z"})}
        finally:
            direct.close()


# --- nginx in front ---------------------------------------------------------------------


async def test_clients_through_nginx_reach_both_nodes(
    mysql_url: str, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat.server.session")
    # The shipped nginx config speaks the PROXY protocol to the nodes.
    async with (
        two_nodes(mysql_url, redis_url, proxy_protocol=True) as (a, b),
        nginx_proxy((a.ports[0], b.ports[0]), tmp_path / "nginx") as port,
    ):
        names = [f"user{i}" for i in range(6)]
        async with dial(port, tls=True) as c:
            ids = {name: await register(c, name) for name in names}
        async with trio.open_nursery() as nursery:
            clients: dict[str, ChatClient] = {}
            ready = trio.Event()
            finished = trio.Event()

            async def connected(name: str) -> None:
                async with dial(port, tls=True) as c:
                    await login(c, name)
                    clients[name] = c
                    if len(clients) == len(names):
                        ready.set()
                    await finished.wait()

            for name in names:
                nursery.start_soon(connected, name)
            with trio.fail_after(DEADLINE):
                await ready.wait()
            on_a, on_b = logged_in(a), logged_in(b)
            assert on_a and on_b, (on_a, on_b)
            assert on_a | on_b == set(names)
            # A conversation between a client on each node, through nginx both ways.
            x, y = sorted(on_a)[0], sorted(on_b)[0]
            await clients[x].call("send", to=ids[y], text="via nginx")
            assert (await receive(clients[y], "message"))["text"] == "via nginx"
            await clients[y].call("send", to=ids[x], text="and back")
            assert (await receive(clients[x], "message"))["text"] == "and back"
            finished.set()
    # The nodes logged the client's own address and port, read from nginx's header.
    opened = [r.getMessage() for r in caplog.records if "connection opened" in r.getMessage()]
    assert opened and all(" via 127.0.0.1:" in line for line in opened), opened


# --- nodes stopping and dying -----------------------------------------------------------


@pytest.mark.slow
async def test_sigterm_frees_only_the_stopped_nodes_users(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with (
        node_process(mysql_url, redis_url, "node-a", tmp_path) as a,
        node_process(mysql_url, redis_url, "node-b", tmp_path) as b,
        dial(a.port) as alice,
        dial(b.port) as bob,
        dial(b.port) as carol,
    ):
        await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await register(carol, "carol")
        for c, name in [(alice, "alice"), (bob, "bob"), (carol, "carol")]:
            await login(c, name)

        assert await a.stop(signal.SIGTERM, within=15) == 0, a.log_tail()
        with trio.fail_after(DEADLINE):
            await alice.closed.wait()

        async with dial(b.port) as again:
            # The stopped node released its own users before exiting: no lease to wait for.
            await login(again, "alice")
            # The other node's users are untouched: still online, still reachable, still unique.
            found = await again.call("find_user", name="bob")
            assert found["user"]["online"] is True
            await again.call("send", to=bob_id, text="still here?")
            assert (await receive(bob, "message"))["text"] == "still here?"
            async with dial(b.port) as intruder:
                for name in ("bob", "carol"):
                    reply = await intruder.request("login", name=name, password="secret")
                    assert reply["code"] == "already_online", reply


@pytest.mark.slow
async def test_kill_9_frees_users_within_the_lease(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with (
        node_process(mysql_url, redis_url, "node-a", tmp_path) as a,
        node_process(mysql_url, redis_url, "node-b", tmp_path) as b,
        dial(a.port) as alice,
        dial(b.port) as bob,
    ):
        alice_id = await register(alice, "alice")
        await register(bob, "bob")
        await login(alice, "alice")
        await login(bob, "bob")

        assert await a.stop(signal.SIGKILL, within=15) == -signal.SIGKILL
        # Sent while alice's lease still names the dead node: stored, delivered later.
        sent = [
            (await bob.call("send", to=alice_id, text=f"are you there {i}"))["message_id"]
            for i in range(3)
        ]
        async with dial(b.port) as again:
            reply = await login_when_free(again, "alice")  # once her lease has expired
            assert reply["offline"] == len(sent)
            events = [await receive(again, "message") for _ in sent]
            assert [e["message_id"] for e in events] == sent
        assert "stopped" not in a.log_tail()  # it really died without its shutdown


# --- Redis trouble ----------------------------------------------------------------------


async def send_when_able(c: ChatClient, to: int, text: str, cid: str) -> dict[str, Any]:
    """Send, retrying (same ``cid``) while the node answers ``unavailable``."""
    with trio.fail_after(DEADLINE):
        while True:
            reply = await c.request("send", to=to, text=text, cid=cid)
            if reply["type"] == "ok":
                return reply
            assert reply["code"] == "unavailable", reply
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_redis_restart_mid_conversation(
    mysql_url: str, redis_url: str, redis_server: RedisServer
) -> None:
    """Redis goes away for less than a lease and comes back empty while alice (node A)
    writes to bob (node B): nobody is disconnected, every ``ok``'d message reaches bob
    once, in order, without anyone logging in again; logins work again once Redis
    answers, and bob is still known to be online on B (nobody could log in as him)."""
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as alice, client(b) as bob:
        await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await register(alice, "carol")
        await login(alice, "alice")
        await login(bob, "bob")

        sent, got = Tally(), Tally()
        stop_sending = trio.Event()

        async def sender() -> None:
            i = 0
            while not stop_sending.is_set():
                reply = await send_when_able(alice, bob_id, f"{i}", f"c{i}")
                sent.add(reply["message_id"])
                i += 1
                await trio.sleep(0.02)

        async def receiver() -> None:
            while True:
                got.add((await receive(bob, "message"))["message_id"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            nursery.start_soon(sender)
            with trio.fail_after(DEADLINE):
                await got.reach(5)
            await redis_server.restart(down_seconds=1.0)
            # Logins work again as soon as Redis answers: no settling period.
            async with client(b) as c:
                await login_when_free(c, "carol")
            with trio.fail_after(DEADLINE):
                await sent.reach(len(sent) + 20)
            stop_sending.set()
            with trio.fail_after(DEADLINE):
                await got.reach(len(sent))
            # A sentinel after the last one: a duplicate would have arrived before it.
            last = await send_when_able(alice, bob_id, "sentinel", "sentinel")
            with trio.fail_after(DEADLINE):
                await got.reach(len(sent) + 1)
            nursery.cancel_scope.cancel()
        assert got.items == [*sent.items, last["message_id"]]
        assert not alice.closed.is_set() and not bob.closed.is_set()
        assert await b.services.broker.locate([bob_id]) == {bob_id: frozenset({"node-b"})}
        async with client(a) as intruder:
            reply = await intruder.request("login", name="bob", password="secret")
            assert reply["code"] == "already_online", reply


async def test_while_redis_is_down_sessions_wait_and_nobody_is_disconnected(
    mysql_url: str, redis_url: str, redis_server: RedisServer
) -> None:
    """No Redis at all: logged-in sessions answer ``unavailable`` (their users might be
    logged in elsewhere soon) and logins too, but registrations work and no connection
    is closed; once Redis is back, the same send goes through and is delivered."""
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as alice, client(b) as bob:
        await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await login(alice, "alice")
        await login(bob, "bob")
        await trio.to_thread.run_sync(redis_server.stop)
        try:
            with trio.fail_after(DEADLINE):
                while not (a.router.paused and b.router.paused):  # noqa: ASYNC110 (two nodes)
                    await trio.sleep(0.05)
            reply = await alice.request("send", to=bob_id, text="later", cid="x1")
            assert reply["code"] == "unavailable", reply
            assert (await alice.request("ping"))["type"] == "ok"
            async with client(a) as c:
                await register(c, "carol")
                reply = await c.request("login", name="carol", password="secret")
                assert reply["code"] == "unavailable", reply
        finally:
            await trio.to_thread.run_sync(redis_server.start)
        sent = await send_when_able(alice, bob_id, "later", "x1")
        event = await receive(bob, "message")
        assert (event["message_id"], event["text"]) == (sent["message_id"], "later")
        assert not alice.closed.is_set() and not bob.closed.is_set()


async def test_a_silently_dead_subscription_is_replaced(
    mysql_url: str, redis_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node B's pub/sub connection goes half-open (silent, never closed): B pings it,
    gets no pong, subscribes again and re-reads the store, so bob still gets the
    message alice sent while B was deaf."""
    # Ping after 1 s of silence instead of 5 s, only to keep the test short.
    monkeypatch.setattr("chat.broker.redis_subscription.PING_SECONDS", 1.0)
    async with (
        freezable_proxy(redis_server.port) as proxy,
        cluster_node(mysql_url, make_broker(redis_url, "node-a")) as a,
        cluster_node(mysql_url, make_broker(proxy.url(redis_url), "node-b")) as b,
        client(a) as alice,
        client(b) as bob,
    ):
        await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await login(alice, "alice")
        await login(bob, "bob")
        await alice.call("send", to=bob_id, text="before")
        assert (await receive(bob, "message"))["text"] == "before"  # B hears, via the proxy

        # Only the subscription dies: B's commands still reach Redis, so its leases stay
        # renewed (frozen command connections would stall renewals until B fences bob off).
        assert proxy.freeze(subscribers_only=True) == 1
        sent = await alice.call("send", to=bob_id, text="while B is deaf")
        event = await receive(bob, "message")
        assert (event["message_id"], event["text"]) == (sent["message_id"], "while B is deaf")
        await no_event(bob)


@pytest.mark.slow
async def test_a_node_cut_off_from_redis_pauses_and_closes_only_users_taken_elsewhere(
    mysql_url: str, redis_url: str, redis_server: RedisServer
) -> None:
    """Node B loses Redis (open connections go silent, new ones hang). Never two nodes
    at once: by the time bob can log in on A (his lease ran out), B has paused his old
    connection, which gets nothing meant for him; when B reaches Redis again it closes
    that connection (bob is A's now) and only that one: carol, whom nobody took, goes
    on on B."""
    lease = 6.0  # B pauses a heartbeat (2 s) before its leases would lapse, or sooner
    async with (
        freezable_proxy(redis_server.port) as proxy,
        cluster_node(mysql_url, make_broker(redis_url, "node-a")) as a,
        cluster_node(
            mysql_url, RedisBroker(proxy.url(redis_url), "node-b", lease_seconds=lease)
        ) as b,
        client(b) as bob,
        client(b) as carol,
        client(a) as alice,
    ):
        await register(alice, "alice")
        bob_id = await register(bob, "bob")
        carol_id = await register(carol, "carol")
        await login(alice, "alice")
        await login(bob, "bob")
        await login(carol, "carol")
        proxy.cut()
        try:
            async with client(a) as again:
                with trio.fail_after(lease + DEADLINE):
                    while True:
                        reply = await again.request("login", name="bob", password="secret")
                        if reply["type"] == "ok":
                            break
                        assert reply["code"] in ("already_online", "unavailable"), reply
                        await trio.sleep(0.05)
                assert b.router.paused, "bob was served by two nodes at once"
                reply = await bob.request("find_user", name="alice")
                assert reply["code"] == "unavailable", reply
                sent = await alice.call("send", to=bob_id, text="to the new login")
                assert (await receive(again, "message"))["message_id"] == sent["message_id"]
                proxy.thaw()
                with trio.fail_after(DEADLINE):
                    await bob.closed.wait()
                assert logged_in(b) == {"carol"}
                # carol was only paused: she goes on where she was.
                sent = await send_when_able(alice, carol_id, "still there?", "c1")
                event = await receive(carol, "message")
                assert event["message_id"] == sent["message_id"]
                assert not carol.closed.is_set()
                assert drained(bob) == [], "the paused connection got something"
        finally:
            proxy.thaw()  # B's Redis calls in flight finish, so B stops promptly


# --- routing in batches -------------------------------------------------------------------


def publishes(redis_server: RedisServer) -> int:
    """How many PUBLISH commands the test's Redis has run so far."""
    direct = redis.Redis(port=redis_server.port)
    try:
        stats = direct.info("commandstats")
    finally:
        direct.close()
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


async def test_a_burst_to_another_node_goes_in_batches_and_arrives_whole(
    mysql_url: str, redis_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten senders on A write five messages each to twenty recipients on B, all at once.
    The wake-ups travel in batches (far fewer PUBLISHes than messages); B's subscription
    goes deaf in the middle of the burst, so some batches are lost; every message still
    reaches its recipient exactly once, in order, read from the store."""
    monkeypatch.setattr(
        "chat.broker.redis_subscription.PING_SECONDS", 1.0
    )  # notice the deafness sooner
    senders, recipients, each = 10, 20, 5
    async with (
        freezable_proxy(redis_server.port) as proxy,
        cluster_node(mysql_url, make_broker(redis_url, "node-a")) as a,
        cluster_node(mysql_url, make_broker(proxy.url(redis_url), "node-b")) as b,
        trio.open_nursery() as nursery,
    ):
        async with client(a) as c:
            for i in range(senders):
                await register(c, f"s{i}")
            ids = [await register(c, f"r{i}") for i in range(recipients)]
        outs: list[ChatClient] = []
        ins: list[ChatClient] = []
        stack = trio.Event()

        async def hold(node: Node, name: str, into: list[ChatClient], ready: trio.Event) -> None:
            async with client(node) as c:
                await login(c, name)
                into.append(c)
                ready.set()
                await stack.wait()

        for name, node, into in [
            *((f"s{i}", a, outs) for i in range(senders)),
            *((f"r{i}", b, ins) for i in range(recipients)),
        ]:
            ready = trio.Event()
            nursery.start_soon(hold, node, name, into, ready)
            await ready.wait()

        expected: dict[int, list[int]] = {user: [] for user in ids}

        async def send_all(round_: int) -> None:
            async def one(sender: int, to: int) -> None:
                reply = await outs[sender].call("send", to=to, text=f"{sender}:{round_}")
                expected[to].append(reply["message_id"])

            async with trio.open_nursery() as group:
                for sender in range(senders):
                    for k in range(recipients // senders):
                        group.start_soon(one, sender, ids[(sender * 2 + k) % recipients])

        before = publishes(redis_server)
        for round_ in range(each):
            if round_ == 2:
                assert proxy.freeze(subscribers_only=True) == 1  # B goes deaf mid-burst
            await send_all(round_)
        sent = sum(len(v) for v in expected.values())
        assert sent == senders * (recipients // senders) * each
        assert publishes(redis_server) - before <= sent // 2, "wake-ups were not batched"

        for user, c in zip(ids, ins, strict=True):
            got = [(await receive(c, "message"))["message_id"] for _ in expected[user]]
            assert sorted(got) == sorted(expected[user])
            assert got == sorted(got)  # one store, one order: message ids grow
        # Sentinels: anything repeated would have come before them.
        for user in ids:
            await outs[0].call("send", to=user, text="sentinel")
        for c in ins:
            assert (await receive(c, "message"))["text"] == "sentinel"
        stack.set()


# --- clusters side by side -------------------------------------------------------------------


async def test_two_clusters_on_one_redis_never_hear_each_other(
    redis_server: RedisServer,
) -> None:
    """Two clusters on two databases of one Redis server, with the same node ids and
    (separate MariaDB databases) the same user ids: a login in one does not make the
    other's user with that id ``already_online``, and an event in one reaches nobody in
    the other."""
    url_x, url_y = redis_server.new_url(), redis_server.new_url()
    with mysql_database() as db_x, mysql_database() as db_y:
        async with (
            cluster_node(db_x, make_broker(url_x, "n1")) as x1,
            cluster_node(db_x, make_broker(url_x, "n2")) as x2,
            cluster_node(db_y, make_broker(url_y, "n1")) as y1,
            cluster_node(db_y, make_broker(url_y, "n2")) as y2,
            client(x1) as alice,
            client(x2) as bob,
            client(y1) as carol,
            client(y2) as dave,
        ):
            for c, name in [(alice, "alice"), (bob, "bob"), (carol, "carol"), (dave, "dave")]:
                await register(c, name)
            # Same ids in both clusters: bob and dave are both user 2.
            await login(alice, "alice")
            bob_reply = await login(bob, "bob")
            carol_reply = await login(carol, "carol")
            dave_reply = await login(dave, "dave")  # would be already_online if shared
            assert bob_reply["user"]["id"] == dave_reply["user"]["id"]
            assert carol_reply["user"]["id"] == 1
            # An event in X for user 2 on n2 (bob) must not reach Y's user 2 on n2 (dave).
            await alice.call("add_friend", user_id=bob_reply["user"]["id"])
            assert (await receive(bob, "friend_added"))["friend"]["name"] == "alice"
            sent = await carol.call("send", to=dave_reply["user"]["id"], text="only this")
            event = await receive(dave, "message")
            assert event["message_id"] == sent["message_id"], event


# --- a paused session -------------------------------------------------------------------


async def three_kept_for_bob_then_pause(alice: ChatClient, paused: Node) -> tuple[int, list[int]]:
    """alice (logged in here) keeps three messages for bob (not logged in anywhere),
    then the node ``paused`` gets ``Pause`` the way its broker hands it over. bob's id
    and the three message ids, in order."""
    await register(alice, "alice")
    bob_id = await register(alice, "bob")
    await login(alice, "alice")
    sent = [(await alice.call("send", to=bob_id, text=f"{i}"))["message_id"] for i in range(3)]
    paused.router.on_notice(Pause("a test"))
    return bob_id, sent


async def test_a_paused_session_holds_kept_messages_back_until_it_resumes(
    mysql_url: str, redis_url: str
) -> None:
    """While its node is paused, a login is answered but its kept messages wait; on
    resume they follow, in order. (The pause is handed to the node's router the way
    the broker hands it over.)"""
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as alice:
        _, sent = await three_kept_for_bob_then_pause(alice, b)
        async with client(b) as bob:
            assert (await login(bob, "bob"))["offline"] == 3
            await no_event(bob)  # a quiet window: while paused, no sentinel could arrive either
            b.router.on_notice(Resume())
            got = [(await receive(bob, "message"))["message_id"] for _ in sent]
            assert got == sent


async def test_a_resumed_session_whose_device_was_served_elsewhere_closes(
    mysql_url: str, redis_url: str
) -> None:
    """bob's session on B is paused with kept messages held back; meanwhile his lease
    vanished and he logged in on A with the same device, got them, and logged out. When
    B resumes with his lease re-created, the old session must not write them a second
    time: the device's stored positions are ahead of it, so it closes."""
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as alice:
        bob_id, sent = await three_kept_for_bob_then_pause(alice, b)
        async with client(b) as bob:
            assert (await login(bob, "bob"))["offline"] == 3
            # His lease lapses; he logs in on A, gets the three, and leaves. (B's
            # heartbeat may re-create the lease before A's login: then try again.)
            key = make_broker(redis_url, "probe").lease_key(bob_id, "")
            direct = redis.Redis.from_url(redis_url)
            async with client(a) as elsewhere:
                try:
                    with trio.fail_after(DEADLINE):
                        while True:
                            await trio.to_thread.run_sync(direct.delete, key)
                            reply = await elsewhere.request("login", name="bob", password="secret")
                            if reply["type"] == "ok":
                                break
                            assert reply["code"] == "already_online", reply
                finally:
                    direct.close()
                assert reply["offline"] == 3
                got = [(await receive(elsewhere, "message"))["message_id"] for _ in sent]
                assert got == sent
                await elsewhere.call("logout")
            (held,) = [s for s in b.router.sessions() if s.user and s.user.id == bob_id]
            b.router.on_notice(Resume(frozenset({held.holder})))
            # The store says that device was given them elsewhere: this session is stale
            # and closes without writing them a second time.
            with trio.fail_after(DEADLINE):
                await bob.closed.wait()
            while True:
                try:
                    event = bob.events.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                assert event["type"] != "message", f"a message came twice: {event}"


async def test_an_evicted_session_never_writes_what_it_held(mysql_url: str, redis_url: str) -> None:
    """bob's session on B holds kept messages back while B is paused, and a presence
    event it was told meanwhile; then B learns that bob logged in elsewhere (Evict)
    and resumes in the same breath. The evicted session must close without writing
    any of them: the messages stay kept for bob's other login, and the event is not
    this connection's to show any more."""
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as alice:
        bob_id, _ = await three_kept_for_bob_then_pause(alice, b)
        async with client(b) as bob:
            assert (await login(bob, "bob"))["offline"] == 3
            (held,) = [s for s in b.router.sessions() if s.user and s.user.id == bob_id]
            told = PresenceEvent(UserRef(10_000, "someone"), True)
            b.router.presence(PresencePush((bob_id,), told, 1))
            b.router.on_notice(Evict(bob_id, held.holder))
            b.router.on_notice(Resume())
            with trio.fail_after(DEADLINE):
                await bob.closed.wait()
            assert [e for e in drained(bob) if e["type"] in ("message", "presence")] == []
        async with client(a) as again:
            reply = await login_when_free(again, "bob")
            assert reply["offline"] == 3
