"""``history`` (protocol 1.1) on both stores and over both transports: paging is exact
in both directions, ``more`` is right at the edges, pages are cut by id (not ``ts``)
and to fit a frame, history says what delivery said, and only members read a group."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from chat.client import ChatClient
from chat.server import Node

from .support import client, login, next_is_sentinel, register
from .test_requests import error_code
from .ws_support import Connect


@pytest.fixture
def tcp(node: Node) -> Connect:
    """Clients over TCP only, for what the store decides: the tests that take ``connect``
    run over both transports already, and running these twice would only cost time."""
    return lambda: client(node)


async def page(c: ChatClient, **fields: Any) -> tuple[list[int], bool]:
    reply = await c.call("history", **fields)
    ids = [int(m["message_id"]) for m in reply["messages"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), reply
    assert isinstance(reply["more"], bool)
    return ids, reply["more"]


async def every_page_backward(c: ChatClient, limit: int, **where: Any) -> list[int]:
    """Page with ``before`` from the newest until ``more`` is false."""
    seen: list[int] = []
    ids, more = await page(c, limit=limit, **where)
    while True:
        assert len(ids) == limit or not more, (ids, more)
        seen[:0] = ids
        if not more:
            return seen
        ids, more = await page(c, limit=limit, before=ids[0], **where)


async def every_page_forward(c: ChatClient, after: int, limit: int, **where: Any) -> list[int]:
    seen: list[int] = []
    while True:
        ids, more = await page(c, limit=limit, after=after, **where)
        assert len(ids) == limit or not more, (ids, more)
        seen += ids
        if not more:
            return seen
        after = ids[-1]


async def test_paging_is_exact_in_both_directions(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        ann_id, bob_id = await register(ann, "ann"), await register(bob, "bob")
        carol_id = await register(ann, "carol")
        await login(ann, "ann")
        await login(bob, "bob")
        group = (await ann.call("create_group", name="g"))["group"]["id"]
        conversation: list[int] = []
        noise: list[int] = []
        for n in range(23):
            sender, to = (ann, bob_id) if n % 3 else (bob, ann_id)
            conversation.append((await sender.call("send", to=to, text=f"m{n}"))["message_id"])
            if n % 5 == 0:
                noise.append((await ann.call("send", to=carol_id, text="x"))["message_id"])
                noise.append((await ann.call("group_send", group_id=group, text="y"))["message_id"])

        for limit in (1, 5, 23, 200):
            assert await every_page_backward(ann, limit, **{"with": bob_id}) == conversation
            assert await every_page_backward(bob, limit, **{"with": ann_id}) == conversation
            assert (
                await every_page_forward(ann, conversation[0], limit, **{"with": bob_id})
                == (conversation[1:])
            )
        # after: 0 is below every id: the oldest page, and paging on from there.
        assert await every_page_forward(ann, 0, 5, **{"with": bob_id}) == conversation
        assert await page(ann, **{"with": bob_id}, after=0, limit=2) == (conversation[:2], True)
        assert await page(ann, **{"with": bob_id}, before=0) == ([], False)
        # The edges: nothing beyond the first and the last message.
        assert await page(ann, **{"with": bob_id}, before=conversation[0]) == ([], False)
        assert await page(ann, **{"with": bob_id}, after=conversation[-1]) == ([], False)
        assert await page(ann, **{"with": bob_id}, before=conversation[1]) == (
            conversation[:1],
            False,
        )
        assert await page(ann, **{"with": bob_id}, after=conversation[-2]) == (
            conversation[-1:],
            False,
        )
        assert await page(ann, **{"with": bob_id}, limit=23) == (conversation, False)
        assert await page(ann, **{"with": bob_id}, limit=22) == (conversation[1:], True)
        # Positions, not lookups: ids of other conversations and ids of no message page too.
        for anchor in noise:
            older = [m for m in conversation if m < anchor]
            newer = [m for m in conversation if m > anchor]
            assert await page(ann, **{"with": bob_id}, before=anchor, limit=3) == (
                older[-3:],
                len(older) > 3,
            )
            assert await page(ann, **{"with": bob_id}, after=anchor, limit=3) == (
                newer[:3],
                len(newer) > 3,
            )
        for far in (10**9, 2**63 - 1, 2**63, 2**70):
            assert await page(ann, **{"with": bob_id}, before=far, limit=4) == (
                conversation[-4:],
                True,
            )
            assert await page(ann, **{"with": bob_id}, after=far) == ([], False)
        # Default limit 50 and the newest first: all 23 fit.
        assert await page(ann, **{"with": bob_id}) == (conversation, False)


async def test_page_boundary_between_messages_with_the_same_ts(node: Node, tcp: Connect) -> None:
    async with tcp() as ann:
        await register(ann, "ann")
        me = (await login(ann, "ann"))["user"]["id"]
        sent = [(await ann.call("send", to=me, text=f"n{n}"))["message_id"] for n in range(6)]

        def same_ts(conn: Any) -> None:
            cursor = conn.cursor()
            cursor.execute("UPDATE messages SET ts = 1700000000000")
            conn.commit()

        await trio.to_thread.run_sync(node.services.store.pool.run_blocking, same_ts)
        for limit in (1, 2, 4):
            assert await every_page_backward(ann, limit, **{"with": me}) == sent
            assert await every_page_forward(ann, sent[0], limit, **{"with": me}) == sent[1:]
        reply = await ann.call("history", **{"with": me}, before=sent[3], limit=2)
        assert [m["message_id"] for m in reply["messages"]] == sent[1:3]
        assert {m["ts"] for m in reply["messages"]} == {1700000000000}


async def test_history_agrees_with_delivered_events(tcp: Connect) -> None:
    async with tcp() as ann, tcp() as bob:
        ann_id, bob_id = await register(ann, "ann"), await register(bob, "bob")
        carol_id = await register(ann, "carol")
        await login(ann, "ann")
        await login(bob, "bob")
        group = (await ann.call("create_group", name="club"))["group"]["id"]
        await bob.call("join_group", group_id=group)
        async with tcp() as carol:
            await login(carol, "carol")
            await carol.call("join_group", group_id=group)
            await carol.call("logout")
        delivered: list[dict[str, Any]] = []
        for n in range(4):
            await ann.call("send", to=bob_id, text=f"to bob {n} ✓")
            delivered.append(await bob.next_event())
            await ann.call("group_send", group_id=group, text=f"to all {n}")
            delivered.append(await bob.next_event())
        await ann.call("send", to=carol_id, text="while you were out")
        await bob.call("send", to=carol_id, text="hi carol")
        await next_is_sentinel(bob, bob_id, ann)

        def without_offline(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v for k, v in e.items() if k not in ("type", "offline")} for e in events]

        direct = [e for e in delivered if e["type"] == "message"]
        in_group = [e for e in delivered if e["type"] == "group_message"]
        history = (await bob.call("history", **{"with": ann_id}))["messages"]
        assert history[:-1] == without_offline(direct)  # the last one is the sentinel
        assert history[-1]["text"] == "sentinel" and history[-1]["to"] == bob_id
        assert (await bob.call("history", group_id=group))["messages"] == without_offline(in_group)
        # carol was offline: the kept events she gets at login are what history says.
        async with tcp() as carol:
            reply = await login(carol, "carol")
            kept = [await carol.next_event() for _ in range(reply["offline"])]
            assert all(e["offline"] is True for e in kept)
            groups = [e for e in kept if e["type"] == "group_message"]
            from_ann = [e for e in kept if e["type"] == "message" and e["from"]["id"] == ann_id]
            assert (await carol.call("history", group_id=group))["messages"] == (
                without_offline(groups)
            )
            assert (await carol.call("history", **{"with": ann_id}))["messages"] == (
                without_offline(from_ann)
            )


async def test_group_history_is_for_members_only(tcp: Connect) -> None:
    async with tcp() as ann, tcp() as bob:
        await register(ann, "ann")
        await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        group = (await ann.call("create_group", name="club"))["group"]["id"]
        before_bob = (await ann.call("group_send", group_id=group, text="early"))["message_id"]
        refused = await bob.request("history", group_id=group)
        assert error_code(refused) == "not_a_member" and "messages" not in refused
        assert error_code(await bob.request("history", group_id=group + 100)) == "no_such_group"
        assert error_code(await bob.request("history", group_id=2**63)) == "no_such_group"
        await bob.call("join_group", group_id=group)
        # A member reads everything since the group was created, from before joining too.
        assert await page(bob, group_id=group) == ([before_bob], False)


async def test_history_of_oneself_and_of_nobody(tcp: Connect) -> None:
    async with tcp() as ann:
        ann_id = await register(ann, "ann")
        bob_id = await register(ann, "bob")
        assert error_code(await ann.request("history", **{"with": bob_id})) == "not_logged_in"
        await login(ann, "ann")
        note = (await ann.call("send", to=ann_id, text="note to self"))["message_id"]
        await ann.next_event()
        to_bob = (await ann.call("send", to=bob_id, text="not a note"))["message_id"]
        assert await page(ann, **{"with": ann_id}) == ([note], False)
        assert await page(ann, **{"with": bob_id}) == ([to_bob], False)
        for nobody in (bob_id + 100, 2**63, 2**80):
            reply = await ann.request("history", **{"with": nobody})
            assert error_code(reply) == "no_such_user" and "with" in reply["message"]


async def test_malformed_history_requests_name_the_field(connect: Connect) -> None:
    async with connect() as ann:
        ann_id = await register(ann, "ann")
        await login(ann, "ann")
        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "with"),
            ({"with": ann_id, "group_id": 1}, "group_id"),
            ({"with": ann_id, "before": 5, "after": 3}, "before"),
            ({"with": "1"}, "with"),
            ({"with": None}, "with"),
            ({"with": 0}, "with"),
            ({"with": True}, "with"),
            ({"group_id": -4}, "group_id"),
            ({"with": ann_id, "limit": 0}, "limit"),
            ({"with": ann_id, "limit": 201}, "limit"),
            ({"with": ann_id, "limit": "5"}, "limit"),
            ({"with": ann_id, "limit": 2.5}, "limit"),
            ({"with": ann_id, "limit": True}, "limit"),
            ({"with": ann_id, "before": -1}, "before"),
            ({"with": ann_id, "before": "9"}, "before"),
            ({"with": ann_id, "after": -1}, "after"),
            ({"with": ann_id, "after": None}, "after"),
            ({"with": ann_id, "after": [1]}, "after"),
        ]
        for fields, named in cases:
            reply = await ann.request("history", rid="h", **fields)
            assert error_code(reply) == "invalid_request", (fields, reply)
            assert named in reply["message"] and reply["rid"] == "h", (fields, reply)
        assert (await ann.call("history", **{"with": ann_id}, limit=200))["more"] is False


async def test_a_page_is_cut_to_fit_one_frame(connect: Connect) -> None:
    """4,096 control characters take ~24 KB of JSON each: three do not fit in 64 KiB."""
    async with connect() as ann:
        me = await register(ann, "ann")
        await login(ann, "ann")
        bulky = "\u0001" * 4096
        ids = [(await ann.call("send", to=me, text=bulky))["message_id"] for _ in range(5)]
        for _ in ids:
            await ann.next_event()
        newest = await ann.call("history", **{"with": me}, limit=200)
        assert [m["message_id"] for m in newest["messages"]] == ids[-2:]
        assert newest["more"] is True and newest["messages"][0]["text"] == bulky
        assert await every_page_backward_fitting(ann, me) == ids
        oldest = await ann.call("history", **{"with": me}, after=ids[0], limit=200)
        assert [m["message_id"] for m in oldest["messages"]] == ids[1:3]
        assert oldest["more"] is True


async def every_page_backward_fitting(c: ChatClient, peer: int) -> list[int]:
    seen: list[int] = []
    fields: dict[str, Any] = {"with": peer, "limit": 200}
    while True:
        ids, more = await page(c, **fields)
        assert ids, "a page that was cut holds at least one message"
        seen[:0] = ids
        if not more:
            return seen
        fields["before"] = ids[0]
