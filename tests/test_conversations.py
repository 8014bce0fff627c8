"""Protocol 1.2 on one node: ``conversations``, ``read`` (markers, events to one's
other devices, receipts) and ``typing``. Black-box: real nodes over real connections,
SQLite and MariaDB (``node``)."""

from __future__ import annotations

import json
from typing import Any

from chat.client import ChatClient
from chat.server import Node

from .support import client, next_is_sentinel, next_of, on, register


async def code(c: ChatClient, kind: str, **fields: Any) -> str:
    reply = await c.request(kind, **fields)
    assert reply["type"] == "error", reply
    return str(reply["code"])


async def sent(c: ChatClient, to: int, text: str) -> int:
    return int((await c.call("send", to=to, text=text))["message_id"])


async def posted(c: ChatClient, group_id: int, text: str) -> int:
    return int((await c.call("group_send", group_id=group_id, text=text))["message_id"])


def summary(page: dict[str, Any]) -> list[tuple[str, int, int, int, int]]:
    """Each conversation as (kind, id, last message id, unread, read)."""
    out = []
    for item in page["conversations"]:
        kind, ref = ("with", item["with"]) if "with" in item else ("group", item["group"])
        out.append((kind, ref["id"], item["last"]["message_id"], item["unread"], item["read"]))
    return out


async def test_conversations_lists_newest_activity_first_with_unread_counts(node: Node) -> None:
    async with client(node) as a, client(node) as b, client(node) as c:
        ann = await register(a, "ann")
        bob = await register(b, "bob")
        cy = await register(c, "cy")
        await on(a, "ann")
        await on(b, "bob")
        await on(c, "cy")
        assert await a.call("conversations") == {"type": "ok", "conversations": [], "more": False}
        group = (await c.call("create_group", name="g"))["group"]["id"]
        await a.call("join_group", group_id=group)
        empty = await b.call("create_group", name="no messages yet")
        await a.call("join_group", group_id=empty["group"]["id"])
        m1 = await sent(b, ann, "hi ann")
        m2 = await sent(b, ann, "still there?")
        g1 = await posted(c, group, "hello group")
        m3 = await sent(a, cy, "ann to cy")
        g2 = await posted(a, group, "ann in the group")
        page = await a.call("conversations")
        assert page["more"] is False
        # Newest activity first; own messages are not unread; the empty group is absent.
        assert summary(page) == [
            ("group", group, g2, 1, 0),
            ("with", cy, m3, 0, 0),
            ("with", bob, m2, 2, 0),
        ]
        items = page["conversations"]
        assert items[0]["group"] == {"id": group, "name": "g"}
        assert items[1]["with"] == {"id": cy, "name": "cy"}
        assert "group" not in items[1] and "with" not in items[0]
        assert "peer_read" not in items[0] and items[1]["peer_read"] == 0
        # `last` in the history format (no `offline`).
        assert items[0]["last"] == {
            "message_id": g2,
            "group_id": group,
            "from": {"id": ann, "name": "ann"},
            "text": "ann in the group",
            "ts": items[0]["last"]["ts"],
        }
        assert items[2]["last"] == {
            "message_id": m2,
            "from": {"id": bob, "name": "bob"},
            "to": ann,
            "text": "still there?",
            "ts": items[2]["last"]["ts"],
        }
        history = await a.call("history", **{"with": bob})
        assert history["messages"][-1] == items[2]["last"]
        # bob sees the same conversation from his side: his own messages, nothing unread.
        assert summary(await b.call("conversations")) == [("with", ann, m2, 0, 0)]
        # Reading moves the marker and the count.
        await a.call("read", **{"with": bob, "message_id": m1})
        await a.call("read", group_id=group, message_id=g1)
        assert summary(await a.call("conversations")) == [
            ("group", group, g2, 0, g1),
            ("with", cy, m3, 0, 0),
            ("with", bob, m2, 1, m1),
        ]
        # New activity moves a conversation to the top.
        m4 = await sent(b, ann, "top")
        assert summary(await a.call("conversations"))[0] == ("with", bob, m4, 2, m1)
        assert m1 < m2 < g1 < m3 < g2 < m4


async def test_conversations_pages_by_before_and_limit(node: Node) -> None:
    async with client(node) as a, client(node) as other:
        ann = await register(a, "ann")
        await on(a, "ann")
        lasts = []
        for n in range(7):
            await register(other, f"u{n}")
        for n in range(7):
            async with client(node) as u:
                await on(u, f"u{n}")
                lasts.append(await sent(u, ann, f"from u{n}"))
        newest_first = lasts[::-1]
        page = await a.call("conversations", limit=3)
        assert [i["last"]["message_id"] for i in page["conversations"]] == newest_first[:3]
        assert page["more"] is True
        seen = []
        before = None
        while True:
            fields: dict[str, Any] = {"limit": 3}
            if before is not None:
                fields["before"] = before
            page = await a.call("conversations", **fields)
            seen += [i["last"]["message_id"] for i in page["conversations"]]
            if not page["more"]:
                break
            before = page["conversations"][-1]["last"]["message_id"]
        assert seen == newest_first
        assert (await a.call("conversations", before=lasts[0]))["conversations"] == []
        assert len((await a.call("conversations"))["conversations"]) == 7  # default 50
        page = await a.call("conversations", before=2**70)
        assert len(page["conversations"]) == 7


async def test_conversations_checks_its_fields(node: Node) -> None:
    async with client(node) as a:
        await register(a, "ann")
        assert await code(a, "conversations") == "not_logged_in"
        await on(a, "ann")
        for bad in ({"limit": 0}, {"limit": 101}, {"limit": "5"}, {"before": -1}, {"before": 1.5}):
            reply = await a.request("conversations", **bad)
            assert reply["code"] == "invalid_request", (bad, reply)
            assert next(iter(bad)) in reply["message"]
        assert (await a.call("conversations", limit=100))["more"] is False


async def test_unread_stops_at_999(node: Node) -> None:
    async with client(node) as a, client(node) as b:
        ann = await register(a, "ann")
        bob = await register(b, "bob")
        await on(a, "ann")
        await on(b, "bob")
        # Pipelined: 1,001 sends in one write, answered in order.
        lines = b"".join(
            json.dumps({"type": "send", "to": ann, "text": f"m{n}"}).encode() + b"\n"
            for n in range(1001)
        )
        replies = await b.send_raw(lines, replies=1001)
        assert all(r["type"] == "ok" for r in replies)
        ids = [r["message_id"] for r in replies]
        assert summary(await a.call("conversations"))[0][3] == 999
        await a.call("read", **{"with": bob, "message_id": ids[1]})
        assert summary(await a.call("conversations"))[0][3] == 999
        await a.call("read", **{"with": bob, "message_id": ids[3]})
        assert summary(await a.call("conversations"))[0][3] == 997
        await a.call("read", **{"with": bob, "message_id": ids[-1]})
        assert summary(await a.call("conversations"))[0][3:] == (0, ids[-1])


async def test_read_checks_its_fields_and_the_conversation(node: Node) -> None:
    async with client(node) as a, client(node) as b, client(node) as c:
        ann = await register(a, "ann")
        bob = await register(b, "bob")
        cy = await register(c, "cy")
        assert await code(a, "read", **{"with": bob, "message_id": 1}) == "not_logged_in"
        await on(a, "ann")
        await on(b, "bob")
        await on(c, "cy")
        group = (await c.call("create_group", name="g"))["group"]["id"]
        other = (await c.call("create_group", name="h"))["group"]["id"]
        in_group = await posted(c, group, "in g")
        in_other = await posted(c, other, "in h")
        to_ann = await sent(b, ann, "bob to ann")
        bob_to_cy = await sent(b, cy, "bob to cy")
        for bad in (
            {"message_id": to_ann},  # neither with nor group_id
            {"with": bob, "group_id": group, "message_id": to_ann},
            {"with": bob},
            {"with": bob, "message_id": 0},
            {"with": bob, "message_id": "1"},
            {"with": 0, "message_id": to_ann},
            {"group_id": True, "message_id": to_ann},
        ):
            assert await code(a, "read", **bad) == "invalid_request", bad
        assert await code(a, "read", **{"with": 10**9, "message_id": to_ann}) == "no_such_user"
        assert await code(a, "read", **{"with": 2**64, "message_id": to_ann}) == "no_such_user"
        assert await code(a, "read", group_id=10**9, message_id=in_group) == "no_such_group"
        assert await code(a, "read", group_id=group, message_id=in_group) == "not_a_member"
        # A message of another conversation, of a group, or none at all.
        for message in (bob_to_cy, in_group, 10**12, 2**64):
            reply = await a.request("read", **{"with": bob, "message_id": message})
            assert reply["code"] == "no_such_message", (message, reply)
        assert await code(a, "read", **{"with": cy, "message_id": to_ann}) == "no_such_message"
        await a.call("join_group", group_id=group)
        for message in (in_other, to_ann):
            assert await code(a, "read", group_id=group, message_id=message) == "no_such_message"
        assert await a.call("read", group_id=group, message_id=in_group) == {"type": "ok"}
        assert await a.call("read", **{"with": bob, "message_id": to_ann}) == {"type": "ok"}


async def test_read_tells_other_devices_and_sends_a_receipt(node: Node) -> None:
    async with (
        client(node) as phone,
        client(node) as laptop,
        client(node) as bob_desk,
        client(node) as bob_phone,
    ):
        ann = await register(phone, "ann")
        bob = await register(bob_desk, "bob")
        await on(phone, "ann", "phone")
        await on(laptop, "ann", "laptop")
        await on(bob_desk, "bob", "desk")
        await on(bob_phone, "bob", "phone")
        first = await sent(bob_desk, ann, "one")
        second = await sent(bob_desk, ann, "two")
        for device in (phone, laptop):
            await next_of(device, "message")
            await next_of(device, "message")
        await next_of(bob_phone, "message")  # own copies
        await next_of(bob_phone, "message")
        await phone.call("read", **{"with": bob, "message_id": second})
        # The laptop (not the phone that read) learns of the marker.
        assert await next_of(laptop, "read") == {"type": "read", "with": bob, "message_id": second}
        receipt = {"type": "read", "by": {"id": ann, "name": "ann"}, "message_id": second}
        assert await next_of(bob_desk, "read") == receipt
        assert await next_of(bob_phone, "read") == receipt
        # A lower marker does nothing and tells nobody (the sentinel comes next).
        await phone.call("read", **{"with": bob, "message_id": first})
        await phone.call("read", **{"with": bob, "message_id": second})
        assert summary(await laptop.call("conversations")) == [("with", bob, second, 0, second)]
        # Extension: bob's list shows ann's marker (what the receipt said).
        bobs = (await bob_desk.call("conversations"))["conversations"]
        assert [(i["with"]["id"], i["peer_read"], i["read"]) for i in bobs] == [(ann, second, 0)]
        await next_is_sentinel(laptop, ann, bob_desk)
        await next_of(phone, "message")
        await next_of(bob_phone, "message")
        await next_is_sentinel(bob_desk, bob, phone)
        await next_of(laptop, "message")  # the phone's copy to the laptop


async def test_read_in_a_group_goes_to_ones_devices_only(node: Node) -> None:
    async with client(node) as phone, client(node) as laptop, client(node) as bob:
        ann = await register(phone, "ann")
        bob_id_ = await register(bob, "bob")
        await on(phone, "ann", "phone")
        await on(laptop, "ann", "laptop")
        await on(bob, "bob")
        group = (await bob.call("create_group", name="g"))["group"]["id"]
        await phone.call("join_group", group_id=group)
        await next_of(laptop, "group_joined")
        message = await posted(bob, group, "hi")
        await next_of(phone, "group_message")
        await next_of(laptop, "group_message")
        await phone.call("read", group_id=group, message_id=message)
        assert await next_of(laptop, "read") == {
            "type": "read",
            "group_id": group,
            "message_id": message,
        }
        # No receipt in a group: bob's next event is ann's sentinel.
        await next_is_sentinel(bob, bob_id_, phone)
        await next_of(laptop, "message")
        assert ann


async def test_no_receipt_when_either_blocked_the_other(node: Node) -> None:
    async with client(node) as a, client(node) as b, client(node) as c:
        ann = await register(a, "ann")
        bob = await register(b, "bob")
        await register(c, "cy")
        await on(a, "ann")
        await on(b, "bob")
        await on(c, "cy")
        m1 = await sent(b, ann, "one")
        m2 = await sent(b, ann, "two")
        await next_of(a, "message")
        await next_of(a, "message")
        await a.call("block", user_id=bob)
        await a.call("read", **{"with": bob, "message_id": m1})  # ann blocked bob
        await next_is_sentinel(b, bob, c)
        await a.call("unblock", user_id=bob)
        await b.call("block", user_id=ann)
        await a.call("read", **{"with": bob, "message_id": m2})  # bob blocked ann
        await next_is_sentinel(b, bob, c)
        # The marker moved all the same, and bob's list does not show it.
        assert summary(await a.call("conversations")) == [("with", bob, m2, 0, m2)]
        bobs = (await b.call("conversations"))["conversations"]
        assert next(i for i in bobs if i["with"]["id"] == ann).get("peer_read") is None
        await b.call("unblock", user_id=ann)
        bobs = (await b.call("conversations"))["conversations"]
        assert next(i for i in bobs if i["with"]["id"] == ann)["peer_read"] == m2


async def test_notes_to_self_have_a_marker_and_no_receipt(node: Node) -> None:
    async with client(node) as phone, client(node) as laptop:
        ann = await register(phone, "ann")
        await on(phone, "ann", "phone")
        await on(laptop, "ann", "laptop")
        note = await sent(phone, ann, "note")
        await next_of(laptop, "message")
        assert summary(await phone.call("conversations")) == [("with", ann, note, 0, 0)]
        await phone.call("read", **{"with": ann, "message_id": note})
        assert await next_of(laptop, "read") == {"type": "read", "with": ann, "message_id": note}
        assert summary(await phone.call("conversations")) == [("with", ann, note, 0, note)]
        assert "peer_read" not in (await phone.call("conversations"))["conversations"][0]


async def test_typing_reaches_a_friends_devices_only(node: Node) -> None:
    async with (
        client(node) as a,
        client(node) as b1,
        client(node) as b2,
        client(node) as c,
    ):
        ann = await register(a, "ann")
        bob = await register(b1, "bob")
        cy = await register(c, "cy")
        assert await code(a, "typing", **{"with": bob, "active": True}) == "not_logged_in"
        await on(a, "ann", "phone")
        await on(b1, "bob", "desk")
        await on(b2, "bob", "phone")
        await on(c, "cy")
        for bad in ({"with": bob}, {"with": bob, "active": 1}, {"active": True}):
            assert await code(a, "typing", **bad) == "invalid_request", bad
        assert await code(a, "typing", **{"with": 10**9, "active": True}) == "no_such_user"
        # Not friends yet: ok, and nothing is sent.
        assert await a.call("typing", **{"with": bob, "active": True}) == {"type": "ok"}
        await next_is_sentinel(b1, bob, c)
        await next_of(b2, "message")
        await a.call("add_friend", user_id=bob)
        await next_of(b1, "friend_added")
        await next_of(b2, "friend_added")
        await a.call("typing", **{"with": bob, "active": True})
        await a.call("typing", **{"with": bob, "active": False})
        for device in (b1, b2):
            assert await next_of(device, "typing") == {
                "type": "typing",
                "from": {"id": ann, "name": "ann"},
                "active": True,
            }
            assert (await next_of(device, "typing"))["active"] is False
        # bob blocks ann: her typing is dropped (the block ends the friendship too).
        await b1.call("block", user_id=ann)
        await a.call("typing", **{"with": bob, "active": True})
        await next_is_sentinel(b1, bob, c)
        # cy is a friend of bob but has not blocked; typing to oneself goes nowhere.
        await c.call("add_friend", user_id=bob)
        await next_of(b1, "friend_added")
        await c.call("typing", **{"with": cy, "active": True})
        await c.call("typing", **{"with": bob, "active": True})
        assert (await next_of(b1, "typing"))["from"]["id"] == cy
