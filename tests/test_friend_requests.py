"""Friend requests with approval (protocol 1.2), on one node: ``settings``,
``friend_requests``, ``accept_friend``, ``decline_friend``, ``add_friend`` with
``pending``, the ``friend_request`` event, and what a requester may not see."""

from __future__ import annotations

from typing import Any

import trio

from chat.client import ChatClient
from chat.store import Window, open_store
from chat.store.requests import MAX_WAITING_REQUESTS

from .bulk_support import bulk_users
from .support import client, login, next_is_sentinel, on, register, running_node
from .ws_support import Connect


def error_code(reply: dict[str, Any]) -> str:
    assert reply["type"] == "error", reply
    assert isinstance(reply["message"], str) and reply["message"]
    return str(reply["code"])


async def approving(c: ChatClient) -> None:
    reply = await c.call("settings", friend_requests="approve")
    assert reply["settings"] == {"friend_requests": "approve"}


async def test_settings(connect: Connect) -> None:
    async with connect() as c:
        assert error_code(await c.request("settings")) == "not_logged_in"
        await register(c, "ann")
        await login(c, "ann")
        assert (await c.call("settings"))["settings"] == {"friend_requests": "anyone"}
        await approving(c)
        assert (await c.call("settings"))["settings"] == {"friend_requests": "approve"}
        for bad in ("everyone", "", 1, None, True):
            reply = await c.request("settings", friend_requests=bad)
            assert error_code(reply) == "invalid_request", bad
            assert reply["message"].startswith("friend_requests:"), reply
        assert (await c.call("settings"))["settings"] == {"friend_requests": "approve"}
        back = await c.call("settings", friend_requests="anyone")
        assert back["settings"] == {"friend_requests": "anyone"}
        await c.call("logout")
        # The setting is kept with the account.
        await login(c, "ann")
        assert (await c.call("settings"))["settings"] == {"friend_requests": "anyone"}


async def test_a_request_waits_for_approval(connect: Connect) -> None:
    async with connect() as ann, connect() as bob, connect() as carol:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await register(carol, "carol")
        await login(ann, "ann")
        await login(bob, "bob")
        await login(carol, "carol")
        await approving(bob)

        reply = await ann.call("add_friend", user_id=bob_id)
        assert reply["friend"] == {"id": bob_id, "name": "bob", "online": False}
        assert reply["pending"] is True
        assert await bob.next_event() == {
            "type": "friend_request",
            "from": {"id": ann_id, "name": "ann"},
        }
        assert (await ann.call("friends"))["friends"] == []
        assert (await bob.call("friends"))["friends"] == []
        listed = await bob.call("friend_requests")
        assert listed["requests"] == [{"id": ann_id, "name": "ann"}] and listed["more"] is False
        assert (await ann.call("friend_requests"))["requests"] == []
        # A repeat answers the same and tells bob nothing again.
        assert await ann.call("add_friend", user_id=bob_id) == reply
        await next_is_sentinel(bob, bob_id, sender=ann)
        # bob is online, but neither ann nor a stranger can see it.
        assert (await ann.call("find_user", name="bob"))["user"]["online"] is False
        assert (await carol.call("find_user", name="bob"))["user"]["online"] is False
        # ann approves nobody: bob sees her online.
        assert (await bob.call("find_user", name="ann"))["user"]["online"] is True

        accepted = await bob.call("accept_friend", user_id=ann_id)
        assert accepted["friend"] == {"id": ann_id, "name": "ann", "online": True}
        assert await ann.next_event() == {
            "type": "friend_added",
            "friend": {"id": bob_id, "name": "bob", "online": True},
        }
        assert (await ann.call("find_user", name="bob"))["user"]["online"] is True
        assert [f["id"] for f in (await ann.call("friends"))["friends"]] == [bob_id]
        assert [f["id"] for f in (await bob.call("friends"))["friends"]] == [ann_id]
        assert (await bob.call("friend_requests"))["requests"] == []
        assert error_code(await bob.request("accept_friend", user_id=ann_id)) == ("no_such_request")
        assert error_code(await ann.request("add_friend", user_id=bob_id)) == "already_friends"


async def test_decline_tells_the_requester_nothing(database_url: str) -> None:
    async with running_node(database_url) as node, client(node) as ann, client(node) as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await approving(bob)
        await ann.call("add_friend", user_id=bob_id)
        assert (await bob.next_event())["type"] == "friend_request"
        assert await bob.call("decline_friend", user_id=ann_id) == {"type": "ok"}
        await next_is_sentinel(ann, ann_id, sender=bob)
        assert (await bob.call("friend_requests"))["requests"] == []
        for request in ("decline_friend", "accept_friend"):
            assert error_code(await bob.request(request, user_id=ann_id)) == "no_such_request"
            assert error_code(await bob.request(request, user_id=10**12)) == "no_such_request"
            assert error_code(await ann.request(request, user_id=bob_id)) == "no_such_request"
            reply = await bob.request(request, user_id="x")
            assert error_code(reply) == "invalid_request" and "user_id" in reply["message"]
        # ann may ask again: bob is told again.
        assert (await ann.call("add_friend", user_id=bob_id))["pending"] is True
        assert (await bob.next_event())["from"] == {"id": ann_id, "name": "ann"}


async def test_mutual_requests_make_the_friendship(database_url: str) -> None:
    async with running_node(database_url) as node, client(node) as ann, client(node) as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await approving(ann)
        await approving(bob)
        assert (await ann.call("add_friend", user_id=bob_id))["pending"] is True
        assert (await bob.next_event())["type"] == "friend_request"
        made = await bob.call("add_friend", user_id=ann_id)
        assert made == {
            "type": "ok",
            "friend": {"id": ann_id, "name": "ann", "online": True},
        }
        assert await ann.next_event() == {
            "type": "friend_added",
            "friend": {"id": bob_id, "name": "bob", "online": True},
        }
        assert (await ann.call("friend_requests"))["requests"] == []
        assert (await bob.call("friend_requests"))["requests"] == []
        assert [f["id"] for f in (await ann.call("friends"))["friends"]] == [bob_id]


async def test_an_anyone_target_befriends_at_once_and_clears_a_request(
    database_url: str,
) -> None:
    """ann (approve) asked bob (anyone); bob's own add_friend makes the friendship at
    once (she had asked him), and a request left from before a setting change goes."""
    async with running_node(database_url) as node, client(node) as ann, client(node) as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await approving(bob)
        await ann.call("add_friend", user_id=bob_id)
        assert (await bob.next_event())["type"] == "friend_request"
        await bob.call("settings", friend_requests="anyone")
        # The waiting request stays listed after the change...
        assert [r["id"] for r in (await bob.call("friend_requests"))["requests"]] == [ann_id]
        # ...and ann's next add_friend is a friendship, as in version 1.
        made = await ann.call("add_friend", user_id=bob_id)
        assert "pending" not in made and made["friend"]["online"] is True
        assert (await bob.next_event())["type"] == "friend_added"
        assert (await bob.call("friend_requests"))["requests"] == []


async def test_no_presence_until_friends(database_url: str) -> None:
    async with (
        running_node(database_url) as node,
        client(node) as ann,
        client(node) as bob,
        client(node) as bob2,
    ):
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await on(bob, "bob", "phone")
        await approving(bob)
        await ann.call("add_friend", user_id=bob_id)
        assert (await bob.next_event())["type"] == "friend_request"
        # bob's presence changes: ann (waiting) hears nothing of it.
        await bob.call("logout")
        await on(bob2, "bob", "laptop")
        await next_is_sentinel(ann, ann_id, sender=bob2)
        # bob's login result does not list ann as a friend either.
        await bob2.call("accept_friend", user_id=ann_id)
        assert (await ann.next_event())["type"] == "friend_added"
        await bob2.call("logout")
        event = await ann.next_event()
        assert event == {"type": "presence", "user": {"id": bob_id, "name": "bob"}, "online": False}


async def test_every_device_of_the_target_gets_the_request(database_url: str) -> None:
    async with (
        running_node(database_url) as node,
        client(node) as ann,
        client(node) as phone,
        client(node) as laptop,
    ):
        ann_id = await register(ann, "ann")
        bob_id = await register(phone, "bob")
        await login(ann, "ann")
        await on(phone, "bob", "phone")
        await on(laptop, "bob", "laptop")
        await approving(phone)
        await ann.call("add_friend", user_id=bob_id)
        for device in (phone, laptop):
            event = await device.next_event()
            assert event == {"type": "friend_request", "from": {"id": ann_id, "name": "ann"}}


async def test_blocking_and_the_other_add_friend_errors_still_apply(database_url: str) -> None:
    async with running_node(database_url) as node, client(node) as ann, client(node) as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await approving(bob)
        assert error_code(await bob.request("add_friend", user_id=bob_id)) == ("cannot_friend_self")
        assert error_code(await ann.request("add_friend", user_id=bob_id + 5)) == "no_such_user"
        await ann.call("add_friend", user_id=bob_id)
        assert (await bob.next_event())["type"] == "friend_request"
        # A block drops the waiting request and refuses new ones.
        await bob.call("block", user_id=ann_id)
        assert (await bob.call("friend_requests"))["requests"] == []
        assert error_code(await ann.request("add_friend", user_id=bob_id)) == "blocked"
        await bob.call("unblock", user_id=ann_id)
        assert error_code(await bob.request("accept_friend", user_id=ann_id)) == ("no_such_request")


async def test_the_list_is_paged(database_url: str) -> None:
    async with running_node(database_url) as node, client(node) as bob:
        bob_id = await register(bob, "bob")
        await login(bob, "bob")
        await approving(bob)
        ids = await bulk_users(database_url, [f"u{n}" for n in range(7)])
        async with client(node) as asker:
            for name in [f"u{n}" for n in range(7)]:
                await login(asker, name)
                await asker.call("add_friend", user_id=bob_id)
                await asker.call("logout")
        first = await bob.call("friend_requests", limit=3)
        assert [r["id"] for r in first["requests"]] == ids[:3] and first["more"] is True
        rest = await bob.call("friend_requests", after=ids[2], limit=500)
        assert [r["id"] for r in rest["requests"]] == ids[3:] and rest["more"] is False
        assert [r["name"] for r in rest["requests"]] == [f"u{n}" for n in range(3, 7)]
        for bad in ({"limit": 0}, {"limit": 501}, {"after": "x"}, {"after": 0}):
            reply = await bob.request("friend_requests", **bad)
            assert error_code(reply) == "invalid_request", bad
            assert reply["message"].startswith(next(iter(bad))), reply
        assert error_code(await bob.request("friend_requests", limit=True)) == "invalid_request"


async def test_at_most_1000_wait_and_the_oldest_goes(database_url: str) -> None:
    """1,001 users ask one user: the first one's request is dropped."""
    names = [f"r{n:04d}" for n in range(MAX_WAITING_REQUESTS + 1)]
    store = await trio.to_thread.run_sync(open_store, database_url)
    try:
        ids = await bulk_users(database_url, ["target", *names])
        target, askers = ids[0], ids[1:]
        await store.change_settings(target, "approve")
        window = Window(limit=100, span_ms=3_600_000)
        # Asked in the order opposite to the ids: the oldest request has the highest id.
        for asker in reversed(askers):
            added = await store.add_friend(asker, target, window)
            assert added.outcome == "pending"
    finally:
        store.close()
    async with running_node(database_url) as node, client(node) as c:
        await login(c, "target")
        seen: list[int] = []
        page = await c.call("friend_requests")
        seen += [r["id"] for r in page["requests"]]
        while page["more"]:
            page = await c.call("friend_requests", after=seen[-1])
            seen += [r["id"] for r in page["requests"]]
        assert len(seen) == MAX_WAITING_REQUESTS
        assert seen == sorted(askers)[:-1]  # the highest id asked first: dropped
