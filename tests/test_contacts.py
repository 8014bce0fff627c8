"""Contacts of protocol 1.1: ``remove_friend``, ``block``/``unblock``/``blocked``, the
paged lists and the ``add_friend`` throttle, on both stores and both transports."""

from __future__ import annotations

from typing import Any

from chat.server import Node

from .bulk_support import bulk_users
from .support import client, login, next_is_sentinel, register
from .ws_support import Connect


def error_code(reply: dict[str, Any]) -> str:
    assert reply["type"] == "error", reply
    assert isinstance(reply["message"], str) and reply["message"]
    return str(reply["code"])


async def test_remove_friend_ends_it_for_both_and_tells_the_other(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await ann.call("add_friend", user_id=bob_id)
        assert (await bob.next_event())["type"] == "friend_added"

        reply = await bob.request("remove_friend", rid="r", user_id=ann_id)
        assert reply == {"type": "ok", "rid": "r"}
        assert await ann.next_event() == {
            "type": "friend_removed",
            "friend": {"id": bob_id, "name": "bob"},
        }
        assert (await ann.call("friends"))["friends"] == []
        assert (await bob.call("friends"))["friends"] == []
        assert error_code(await ann.request("remove_friend", user_id=bob_id)) == "not_friends"
        assert error_code(await ann.request("remove_friend", user_id=ann_id)) == "not_friends"
        missing = await ann.request("remove_friend", user_id=bob_id + 99)
        assert error_code(missing) == "no_such_user"
        # They may become friends again.
        await bob.call("add_friend", user_id=ann_id)
        assert (await ann.next_event())["type"] == "friend_added"
        assert (await login_friends(ann)) == [bob_id]


async def login_friends(c: Any) -> list[int]:
    return [friend["id"] for friend in (await c.call("friends"))["friends"]]


async def test_friend_removed_is_not_kept_for_offline_users(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await ann.call("add_friend", user_id=bob_id)
        await ann.call("remove_friend", user_id=bob_id)
        reply = await login(bob, "bob")
        assert reply["friends"] == [] and reply["offline"] == 0
        await next_is_sentinel(bob, bob_id, sender=ann)
        assert ann_id


async def test_block_refuses_send_and_add_friend_and_ends_friendship(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await bob.call("add_friend", user_id=ann_id)
        assert (await ann.next_event())["type"] == "friend_added"
        await ann.call("create_group", name="both")
        group_id = (await ann.call("groups"))["groups"][0]["id"]
        await bob.call("join_group", group_id=group_id)

        assert await ann.request("block", rid=1, user_id=bob_id) == {"type": "ok", "rid": 1}
        # The friendship ended, on both sides, and bob was told nothing: the next
        # event he gets is ann's sentinel message.
        assert (await ann.call("friends"))["friends"] == []
        assert (await bob.call("friends"))["friends"] == []
        refused = await bob.request("send", rid="s", to=ann_id, text="hello?")
        assert error_code(refused) == "blocked" and refused["rid"] == "s"
        assert "ann" not in refused["message"]
        assert error_code(await bob.request("add_friend", user_id=ann_id)) == "blocked"
        # The blocker cannot add the blocked user either, until unblock.
        assert error_code(await ann.request("add_friend", user_id=bob_id)) == "blocked"
        # Group messages are not affected.
        await bob.call("group_send", group_id=group_id, text="to the group")
        event = await ann.next_event()
        assert (event["type"], event["text"]) == ("group_message", "to the group")
        await next_is_sentinel(bob, bob_id, sender=ann)

        blocked = await ann.call("blocked")
        assert blocked == {"type": "ok", "users": [{"id": bob_id, "name": "bob"}], "more": False}
        assert error_code(await ann.request("block", user_id=bob_id)) == "already_blocked"
        assert error_code(await ann.request("block", user_id=ann_id)) == "cannot_block_self"
        assert error_code(await ann.request("block", user_id=bob_id + 99)) == "no_such_user"
        assert error_code(await ann.request("unblock", user_id=bob_id + 99)) == "no_such_user"

        assert await ann.request("unblock", user_id=bob_id) == {"type": "ok"}
        assert error_code(await ann.request("unblock", user_id=bob_id)) == "not_blocked"
        assert (await ann.call("blocked"))["users"] == []
        sent = await bob.call("send", to=ann_id, text="friends again?")
        event = await ann.next_event()
        assert (event["message_id"], event["text"]) == (sent["message_id"], "friends again?")
        await bob.call("add_friend", user_id=ann_id)


async def test_a_blocked_user_keeps_the_cid_of_an_earlier_send(connect: Connect) -> None:
    """A retry of a send that succeeded before the block gets the first ``ok``."""
    async with connect() as ann, connect() as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        first = await bob.call("send", to=ann_id, text="hi", cid="c1")
        await ann.call("block", user_id=bob_id)
        again = await bob.call("send", to=ann_id, text="hi", cid="c1")
        assert again["message_id"] == first["message_id"]
        refused = await bob.request("send", to=ann_id, text="hi", cid="c2")
        assert error_code(refused) == "blocked"


async def test_blocking_is_one_way_for_sends(connect: Connect) -> None:
    """Only the blocked user's sends to the blocker are refused."""
    async with connect() as ann, connect() as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await ann.call("block", user_id=bob_id)
        sent = await ann.call("send", to=bob_id, text="you are blocked")
        assert (await bob.next_event())["message_id"] == sent["message_id"]
        assert ann_id


async def test_new_requests_need_login(connect: Connect) -> None:
    async with connect() as c:
        requests: list[dict[str, Any]] = [
            {"type": "remove_friend", "user_id": 1},
            {"type": "block", "user_id": 1},
            {"type": "unblock", "user_id": 1},
            {"type": "blocked"},
            {"type": "friends"},
            {"type": "groups"},
            {"type": "group_members", "group_id": 1},
        ]
        for request in requests:
            kind = request.pop("type")
            reply = await c.request(kind, rid=kind, **request)
            assert error_code(reply) == "not_logged_in" and reply["rid"] == kind


BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"type": "remove_friend"}, "user_id"),
    ({"type": "remove_friend", "user_id": "1"}, "user_id"),
    ({"type": "block", "user_id": 0}, "user_id"),
    ({"type": "block", "user_id": True}, "user_id"),
    ({"type": "unblock", "user_id": 1.5}, "user_id"),
    ({"type": "unblock", "user_id": None}, "user_id"),
    ({"type": "blocked", "limit": 0}, "limit"),
    ({"type": "blocked", "limit": 501}, "limit"),
    ({"type": "blocked", "after": -1}, "after"),
    ({"type": "friends", "limit": "10"}, "limit"),
    ({"type": "friends", "after": True}, "after"),
    ({"type": "friends", "limit": 500.5}, "limit"),
    ({"type": "groups", "limit": 201}, "limit"),
    ({"type": "groups", "limit": 0}, "limit"),
    ({"type": "groups", "after": "x"}, "after"),
    ({"type": "group_members"}, "group_id"),
    ({"type": "group_members", "group_id": 1, "limit": 501}, "limit"),
    ({"type": "group_members", "group_id": 1, "after": 0}, "after"),
    ({"type": "group_members", "group_id": [1]}, "group_id"),
]


async def test_bad_fields_are_invalid_request_naming_the_field(node: Node) -> None:
    async with client(node) as c:
        # Logged out: invalid_request comes before not_logged_in.
        for request, field in BAD_FIELDS:
            fields = dict(request)
            kind = fields.pop("type")
            reply = await c.request(kind, **fields)
            assert error_code(reply) == "invalid_request", request
            assert reply["message"].startswith(f"{field}:"), reply


async def test_friends_groups_members_and_blocked_pages(node: Node, database_url: str) -> None:
    ids = await bulk_users(database_url, [f"user{n:02d}" for n in range(12)])
    me, others = ids[0], ids[1:]
    async with client(node) as c:
        await login(c, "user00")
        for other in others:
            await c.call("add_friend", user_id=other)
        seen: list[int] = []
        after: dict[str, Any] = {}
        while True:
            page = await c.call("friends", limit=5, **after)
            assert len(page["friends"]) <= 5
            assert all(f["online"] is False for f in page["friends"])
            seen += [f["id"] for f in page["friends"]]
            if not page["more"]:
                break
            after = {"after": page["friends"][-1]["id"]}
        assert seen == sorted(others)
        exact = await c.call("friends", limit=11)
        assert len(exact["friends"]) == 11 and exact["more"] is False
        assert (await c.call("friends", limit=10))["more"] is True
        assert (await c.call("friends", after=max(others)))["friends"] == []
        huge = 2**64 - 1  # beyond any id: an empty page, not an error
        for kind, key in (("friends", "friends"), ("blocked", "users"), ("groups", "groups")):
            assert await c.call(kind, after=huge) == {"type": "ok", key: [], "more": False}
        assert (await c.call("friends", after=others[4], limit=2))["friends"] == [
            {"id": others[5], "name": "user06", "online": False},
            {"id": others[6], "name": "user07", "online": False},
        ]

        groups = [(await c.call("create_group", name=f"g{n}"))["group"]["id"] for n in range(3)]
        page = await c.call("groups", limit=2)
        assert page["more"] is True
        assert page["groups"] == [
            {
                "id": groups[0],
                "name": "g0",
                "description": "",
                "role": "creator",
                "member_count": 1,
            },
            {
                "id": groups[1],
                "name": "g1",
                "description": "",
                "role": "creator",
                "member_count": 1,
            },
        ]
        last = await c.call("groups", after=groups[1])
        assert [g["id"] for g in last["groups"]] == [groups[2]] and last["more"] is False

        members = await c.call("group_members", group_id=groups[0])
        assert members == {
            "type": "ok",
            "members": [{"id": me, "name": "user00", "role": "creator"}],
            "more": False,
        }
        assert (await c.call("group_members", group_id=groups[0], after=2**64 - 1))["members"] == []
        missing = await c.request("group_members", group_id=groups[-1] + 50)
        assert error_code(missing) == "no_such_group"

        for other in others[:3]:
            await c.call("block", user_id=other)
        first = await c.call("blocked", limit=2)
        assert [u["id"] for u in first["users"]] == others[:2] and first["more"] is True
        rest = await c.call("blocked", after=others[1], limit=2)
        assert [u["id"] for u in rest["users"]] == others[2:3] and rest["more"] is False
        # Blocking ended those friendships.
        assert [f["id"] for f in (await c.call("friends"))["friends"]] == others[3:]

    async with client(node) as outsider:
        await login(outsider, "user05")
        joined = await outsider.call("groups")
        assert joined["groups"] == [] and joined["more"] is False
        refused = await outsider.request("group_members", group_id=groups[0])
        assert error_code(refused) == "not_a_member"
        await outsider.call("join_group", group_id=groups[0])
        members = (await outsider.call("group_members", group_id=groups[0]))["members"]
        assert members == [
            {"id": me, "name": "user00", "role": "creator"},
            {"id": others[4], "name": "user05", "role": "normal"},
        ]
        assert (await outsider.call("groups"))["groups"][0]["member_count"] == 2


async def test_add_friend_is_throttled_per_user(node: Node, database_url: str) -> None:
    ids = await bulk_users(database_url, [f"u{n:03d}" for n in range(103)])
    spammer, targets, bystander = ids[0], ids[1:102], ids[102]
    async with client(node) as c, client(node) as other:
        await login(c, "u000")
        # Refused requests do not count.
        for _ in range(3):
            assert error_code(await c.request("add_friend", user_id=spammer)) == (
                "cannot_friend_self"
            )
        for target in targets[:100]:
            await c.call("add_friend", user_id=target)
        refused = await c.request("add_friend", rid=7, user_id=targets[100])
        assert error_code(refused) == "rate_limited" and refused["rid"] == 7
        assert isinstance(refused["retry_after_ms"], int)
        assert 0 < refused["retry_after_ms"] <= 3_600_000
        # Before the request's own errors: a request that would fail is limited too.
        again = await c.request("add_friend", user_id=targets[0])
        assert error_code(again) == "rate_limited"
        # Other requests, and other users, are not affected.
        assert (await c.call("friends", limit=1))["more"] is True
        await login(other, "u102")
        await other.call("add_friend", user_id=targets[100])
        # Removing friendships does not give the quota back.
        await c.call("remove_friend", user_id=targets[0])
        assert error_code(await c.request("add_friend", user_id=targets[0])) == "rate_limited"
        assert bystander


async def test_an_error_quoting_a_huge_name_stays_small(connect: Connect) -> None:
    async with connect() as c:
        await register(c, "ann")
        await login(c, "ann")
        reply = await c.request("find_user", name="x" * 60_000)
        assert error_code(reply) == "no_such_user" and len(reply["message"]) < 200
