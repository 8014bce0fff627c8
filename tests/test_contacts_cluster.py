"""Contacts across a cluster: two nodes on one MariaDB and one Redis. A block made on
one node refuses the blocked user's requests on the other at once (the database
decides), and ``friend_removed`` reaches a user on another node."""

from __future__ import annotations

import trio

from .bulk_support import bulk_users
from .cluster_support import DEADLINE, receive, two_nodes
from .support import client, login, next_is_sentinel, register


async def test_blocking_across_two_nodes(mysql_url: str, redis_url: str) -> None:
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as ann, client(b) as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await ann.call("add_friend", user_id=bob_id)
        await receive(bob, "friend_added")

        await bob.call("block", user_id=ann_id)  # on node b
        refused = await ann.request("send", to=bob_id, text="hi")  # on node a
        assert (refused["type"], refused["code"]) == ("error", "blocked")
        refused = await ann.request("add_friend", user_id=bob_id)
        assert (refused["type"], refused["code"]) == ("error", "blocked")
        assert (await ann.call("friends"))["friends"] == []
        # ann was told nothing of the block: her next event is bob's sentinel.
        await next_is_sentinel(ann, ann_id, sender=bob)

        await bob.call("unblock", user_id=ann_id)
        sent = await ann.call("send", to=bob_id, text="hello again")
        event = await receive(bob, "message")
        assert event["message_id"] == sent["message_id"]


async def test_friend_removed_reaches_another_node(mysql_url: str, redis_url: str) -> None:
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as ann, client(b) as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await ann.call("add_friend", user_id=bob_id)
        await receive(bob, "friend_added")
        await ann.call("remove_friend", user_id=bob_id)
        event = await receive(bob, "friend_removed")
        assert event == {"type": "friend_removed", "friend": {"id": ann_id, "name": "ann"}}


async def test_the_throttle_counts_across_nodes(mysql_url: str, redis_url: str) -> None:
    """The add_friend count lives in the shared database: a user who moves to another
    node does not start again from zero."""
    async with two_nodes(mysql_url, redis_url) as (a, b):
        ids = await bulk_users(mysql_url, [f"u{n:03d}" for n in range(102)])
        async with client(a) as first:
            await login(first, "u000")
            for target in ids[1:61]:
                await first.call("add_friend", user_id=target)
        async with client(b) as second:
            with trio.fail_after(DEADLINE):  # until node a has seen the first one close
                while True:
                    reply = await second.request("login", name="u000", password="secret")
                    if reply["type"] == "ok":
                        break
                    await trio.sleep(0.05)
            for target in ids[61:101]:
                await second.call("add_friend", user_id=target)
            refused = await second.request("add_friend", user_id=ids[101])
            assert refused["code"] == "rate_limited" and refused["retry_after_ms"] > 0
