"""Friend requests across a cluster: two nodes on one MariaDB and one Redis. The
``friend_request`` event and the ``friend_added`` of an acceptance reach a user on
the other node; the waiting list, the settings and the cap are the database's; two
users adding each other at the same moment on two nodes end as friends."""

from __future__ import annotations

from typing import Any

import trio

from chat.client import ChatClient

from .cluster_support import receive, two_nodes
from .support import client, login, next_is_sentinel, on, register


async def test_requests_and_answers_cross_nodes(mysql_url: str, redis_url: str) -> None:
    async with (
        two_nodes(mysql_url, redis_url) as (a, b),
        client(a) as ann,
        client(b) as bob,
        client(a) as bob_laptop,
    ):
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await on(bob, "bob", "phone")  # node b
        await on(bob_laptop, "bob", "laptop")  # node a
        await bob.call("settings", friend_requests="approve")  # on node b
        reply = await ann.call("add_friend", user_id=bob_id)  # on node a: the setting holds
        assert reply["pending"] is True and reply["friend"]["online"] is False
        for device in (bob, bob_laptop):
            event = await receive(device, "friend_request")
            assert event["from"] == {"id": ann_id, "name": "ann"}
        # The list is the same on the other node; ann sees bob offline until friends.
        assert [r["id"] for r in (await bob_laptop.call("friend_requests"))["requests"]] == [ann_id]
        assert (await ann.call("find_user", name="bob"))["user"]["online"] is False

        accepted = await bob.call("accept_friend", user_id=ann_id)  # node b
        assert accepted["friend"] == {"id": ann_id, "name": "ann", "online": True}
        event = await receive(ann, "friend_added")  # node a
        assert event["friend"] == {"id": bob_id, "name": "bob", "online": True}
        # Both of bob's devices see the list emptied (the database's), and no other
        # event is on its way to ann.
        assert (await bob_laptop.call("friend_requests"))["requests"] == []
        await next_is_sentinel(ann, ann_id, sender=bob)
        assert (await ann.call("find_user", name="bob"))["user"]["online"] is True


async def test_declined_on_one_node_gone_on_the_other(mysql_url: str, redis_url: str) -> None:
    async with (
        two_nodes(mysql_url, redis_url) as (a, b),
        client(a) as ann,
        client(b) as bob,
        client(a) as bob_laptop,
    ):
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await on(bob, "bob", "phone")
        await on(bob_laptop, "bob", "laptop")
        await bob.call("settings", friend_requests="approve")
        await ann.call("add_friend", user_id=bob_id)
        await receive(bob, "friend_request")
        await receive(bob_laptop, "friend_request")
        await bob.call("decline_friend", user_id=ann_id)  # node b
        refused = await bob_laptop.request("accept_friend", user_id=ann_id)  # node a
        assert refused["code"] == "no_such_request", refused
        await next_is_sentinel(ann, ann_id, sender=bob)


async def test_adding_each_other_at_once_on_two_nodes(mysql_url: str, redis_url: str) -> None:
    """Both approve, both ask at the same moment: never two requests left waiting;
    they end as friends (at once, or after the one request left is accepted)."""
    async with two_nodes(mysql_url, redis_url) as (a, b):
        for round_ in range(4):
            async with client(a) as ann, client(b) as bob:
                ann_id = await register(ann, f"ann{round_}")
                bob_id = await register(bob, f"bob{round_}")
                await login(ann, f"ann{round_}")
                await login(bob, f"bob{round_}")
                await ann.call("settings", friend_requests="approve")
                await bob.call("settings", friend_requests="approve")
                replies: dict[str, dict[str, Any]] = {}

                async def add(
                    c: ChatClient, who: str, target: int, into: dict[str, dict[str, Any]]
                ) -> None:
                    into[who] = await c.call("add_friend", user_id=target)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(add, ann, "ann", bob_id, replies)
                    nursery.start_soon(add, bob, "bob", ann_id, replies)
                pending = [who for who, reply in replies.items() if reply.get("pending")]
                assert len(pending) == 1, replies  # the second one made the friendship
                waiting_ann = (await ann.call("friend_requests"))["requests"]
                waiting_bob = (await bob.call("friend_requests"))["requests"]
                assert waiting_ann == [] and waiting_bob == [], (waiting_ann, waiting_bob)
                assert [f["id"] for f in (await ann.call("friends"))["friends"]] == [bob_id]
