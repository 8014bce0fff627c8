"""No reply is larger than a frame, however many friends or members: the friend-spam
scenario and a group of 2,000, on both stores, measured in bytes on the wire (TCP).

The fixtures are written straight into the database (``bulk_support``); logins,
pages and their sizes go over a real connection to a real node."""

from __future__ import annotations

import json
from typing import Any

from chat.protocol import MAX_LINE_BYTES
from chat.server import Node

from .bulk_support import PASSWORD, bulk_friends, bulk_group, bulk_groups, bulk_members, bulk_users
from .support import RawClient, raw

SPAMMERS = 1_000
LONG = "\U0001f600" * 44  # 4 bytes each in UTF-8: 176 bytes, plus a 6-digit number


async def ask(c: RawClient, kind: str, **fields: Any) -> tuple[dict[str, Any], int]:
    """A request's reply and its size in bytes on the wire (without the newline)."""
    await c.send(json.dumps({"type": kind, **fields}).encode() + b"\n")
    while b"\n" not in c.buffer:
        chunk = await c.stream.receive_some(1 << 20)
        assert chunk, "connection closed"
        c.buffer += chunk
    line, c.buffer = c.buffer.split(b"\n", 1)
    reply: dict[str, Any] = json.loads(line)
    assert reply["type"] == "ok", reply
    return reply, len(line.rstrip(b"\r"))


async def every_page(c: RawClient, kind: str, key: str, **fields: Any) -> list[dict[str, Any]]:
    """Page through a list with ``after`` until ``more`` is false; every page fits a frame."""
    items: list[dict[str, Any]] = []
    after: dict[str, Any] = {}
    while True:
        page, size = await ask(c, kind, **fields, **after)
        assert size <= MAX_LINE_BYTES
        assert page[key], "a page with more: true is never empty"
        items += page[key]
        if not page["more"]:
            return items
        after = {"after": page[key][-1]["id"]}


async def test_friend_spam_cannot_brick_an_account(node: Node, database_url: str) -> None:
    """1,000 accounts with the longest names befriend one user: the login reply stays
    within the limit (uncut it would be over 200 KB), marked, and paging ``friends``
    gives every friend exactly once."""
    names = ["victim", *(f"{LONG}{n:06d}" for n in range(SPAMMERS))]
    victim, *spammers = await bulk_users(database_url, names)
    await bulk_friends(database_url, victim, spammers)

    c = await raw(node)
    reply, size = await ask(c, "login", name="victim", password=PASSWORD)
    assert size <= MAX_LINE_BYTES
    assert reply["friends_more"] is True
    assert "groups_more" not in reply
    shown = [friend["id"] for friend in reply["friends"]]
    assert shown == sorted(spammers)[: len(shown)], "the lowest ids, ascending"
    assert len(shown) > 100, "the room is used, not wasted"

    friends = await every_page(c, "friends", "friends")
    assert [f["id"] for f in friends] == sorted(spammers)
    assert {f["name"] for f in friends} == set(names[1:])
    big_page, size = await ask(c, "friends", limit=500)
    assert size <= MAX_LINE_BYTES
    assert big_page["more"] is True and 0 < len(big_page["friends"]) < 500


async def test_a_group_of_2000_is_cut_at_login_and_paged(node: Node, database_url: str) -> None:
    names = ["owner", "small1", "small2", *(f"member{n:05d}" for n in range(2_000))]
    owner, small1, small2, *crowd = await bulk_users(database_url, names)
    big = await bulk_group(database_url, "crowd", owner, "a big one")
    await bulk_members(database_url, big, crowd)
    small = await bulk_group(database_url, "small", owner)
    await bulk_members(database_url, small, [small1, small2])
    await bulk_friends(database_url, owner, [small1])

    c = await raw(node)
    reply, size = await ask(c, "login", name="member01999", password=PASSWORD)
    assert size <= MAX_LINE_BYTES
    (group,) = reply["groups"]
    assert (group["members_more"], group["member_count"]) == (True, 2_001)
    ids = [member["id"] for member in group["members"]]
    assert ids == sorted([owner, *crowd])[: len(ids)] and owner in ids
    assert "friends_more" not in reply and "groups_more" not in reply

    members = await every_page(c, "group_members", "members", group_id=big)
    assert [m["id"] for m in members] == sorted([owner, *crowd])
    assert [m["role"] for m in members].count("creator") == 1
    limited = await ask(c, "group_members", group_id=big, limit=7)
    assert len(limited[0]["members"]) == 7 and limited[0]["more"] is True

    owner_c = await raw(node)
    reply, size = await ask(owner_c, "login", name="owner", password=PASSWORD)
    assert size <= MAX_LINE_BYTES
    crowd_shown, small_shown = reply["groups"]
    assert crowd_shown["members_more"] is True and crowd_shown["member_count"] == 2_001
    # The small group is complete, so it carries no marks; nor does the friend list.
    assert small_shown == {
        "id": small,
        "name": "small",
        "description": "",
        "role": "creator",
        "members": [
            {"id": owner, "name": "owner", "role": "creator"},
            {"id": small1, "name": "small1", "role": "normal"},
            {"id": small2, "name": "small2", "role": "normal"},
        ],
    }
    assert reply["friends"] == [{"id": small1, "name": "small1", "online": False}]
    assert "friends_more" not in reply and "groups_more" not in reply
    groups = await every_page(owner_c, "groups", "groups")
    assert [(g["id"], g["member_count"]) for g in groups] == [(big, 2_001), (small, 3)]


async def test_many_groups_are_cut_and_paged(node: Node, database_url: str) -> None:
    (owner,) = await bulk_users(database_url, ["owner"])
    names = [f"{LONG}{n:04d}" for n in range(80)]
    groups = await bulk_groups(database_url, names, owner, "\U0001f600" * 200)
    c = await raw(node)
    reply, size = await ask(c, "login", name="owner", password=PASSWORD)
    assert size <= MAX_LINE_BYTES
    assert reply["groups_more"] is True
    shown = [g["id"] for g in reply["groups"]]
    assert shown == groups[: len(shown)]
    listed = await every_page(c, "groups", "groups")
    assert [g["id"] for g in listed] == groups
