"""Clients of the original system (``--legacy-port``) against a node, end to end.

The legacy client here is written from the protocol's description alone
(tests/legacy_support.py); its partners are protocol v1 clients on the same node
(and, in test_legacy_cluster.py, on another node). Where "nothing is written" must
be shown, a request that does have an ack (a register of a taken name) follows as
the sentinel: replies leave in request order, so anything written for the earlier
requests would arrive before it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from chat.client import ChatClient
from chat.protocol import MAX_LINE_BYTES
from chat.protocol.legacy import legacy_time
from chat.server import Node

from .legacy_support import LegacyClient, legacy, parse_ack
from .support import client, login, register, running_node


@pytest.fixture
async def sqlite_node(tmp_path: Any) -> AsyncIterator[Node]:
    async with running_node(f"sqlite:///{tmp_path / 'chat.db'}", ws_port=0, legacy_port=0) as node:
        yield node


async def next_chat_event(c: ChatClient) -> dict[str, Any]:
    """The v1 client's next event other than a friend's presence (the legacy user's
    logins and logouts come between)."""
    while True:
        event = await c.next_event()
        if event["type"] != "presence":
            return event


async def sentinel(c: LegacyClient, taken: str) -> None:
    """The next object ``c`` gets must be the ack of this register of a taken name."""
    await c.send(4, name=taken, password="x")
    assert await c.next() == {"msgid": 5, "errno": 1}


async def test_all_ten_messages_with_a_v1_client(database_url: str) -> None:
    async with (
        running_node(database_url, ws_port=0, legacy_port=0) as node,
        legacy(node.legacy_ports[0]) as ann,
        client(node) as bob,
    ):
        ann_id = await ann.register("ann")
        bob_id = await register(bob, "bob")
        await login(bob, "bob")
        await ann.send(4, name="ann", password="again")  # taken
        assert await ann.next() == {"msgid": 5, "errno": 1}

        await ann.send(1, id=ann_id, password="wrong")
        assert await ann.next() == {"msgid": 2, "errno": 1, "errmsg": "id or password is invalid!"}
        ack = await ann.login(ann_id)
        assert ack == {"msgid": 2, "errno": 0, "id": ann_id, "name": "ann"}
        async with legacy(node.legacy_ports[0], end=b"\n") as again:
            await again.send(1, id=ann_id, password="secret")
            assert await again.next() == {
                "msgid": 2,
                "errno": 2,
                "errmsg": "this account is using, input another!",
            }

        # 7: friendship is mutual, as in v1; bob hears of it.
        await ann.send(7, id=ann_id, friendid=bob_id)
        event = await next_chat_event(bob)
        assert (event["type"], event["friend"]["id"]) == ("friend_added", ann_id)

        # 6 both ways; the sender is the logged-in user, whatever the request claims.
        await ann.send(6, id=bob_id, name="bob", toid=bob_id, msg="hi bob", time="1999-01-01")
        event = await next_chat_event(bob)
        assert (event["type"], event["from"], event["text"]) == (
            "message",
            {"id": ann_id, "name": "ann"},
            "hi bob",
        )
        sent = await bob.call("send", to=ann_id, text="hi ann")
        got = await ann.next()
        assert got == {
            "msgid": 6,
            "id": bob_id,
            "name": "bob",
            "toid": ann_id,
            "msg": "hi ann",
            "time": got["time"],
        }
        assert got["time"] == legacy_time(sent["ts"])  # from the stored ts

        # 8, 9, 10: ann creates a group and learns its id from her next login ack.
        await ann.send(8, id=ann_id, groupname="club", groupdesc="for us")
        await sentinel(ann, "ann")
        groups = await bob.call("groups")
        assert groups["groups"] == []
        await ann.send(3, id=ann_id)  # logout: no ack
        await sentinel(ann, "ann")
        ack = await ann.login(ann_id)
        [group] = ack["groups"]
        assert (group["groupname"], group["groupdesc"]) == ("club", "for us")
        assert group["users"] == [
            {"id": ann_id, "name": "ann", "state": "online", "role": "creator"}
        ]
        assert ack["friends"] == [{"id": bob_id, "name": "bob", "state": "online"}]
        await bob.call("join_group", group_id=group["id"])
        await ann.send(10, id=ann_id, name="ann", groupid=group["id"], msg="hello club", time="")
        event = await next_chat_event(bob)
        assert (event["type"], event["group_id"], event["text"]) == (
            "group_message",
            group["id"],
            "hello club",
        )
        await bob.call("group_send", group_id=group["id"], text="hi all")
        got = await ann.next()
        assert (got["msgid"], got["groupid"], got["id"], got["name"], got["msg"]) == (
            10,
            group["id"],
            bob_id,
            "bob",
            "hi all",
        )
        # 9: a legacy user joins a v1 user's group.
        created = await bob.call("create_group", name="bobs")
        await ann.send(9, id=ann_id, groupid=created["group"]["id"])
        await sentinel(ann, "ann")
        members = await bob.call("group_members", group_id=created["group"]["id"])
        assert {m["id"] for m in members["members"]} == {ann_id, bob_id}
        # Nothing else was on its way to bob (a presence event about ann's logins may
        # still be: presence is announced in batches, and it is not what this checks).
        last = await bob.call("send", to=bob_id, text="sentinel")
        assert (await next_chat_event(bob))["message_id"] == last["message_id"]


async def test_kept_messages_in_the_ack_then_right_after_it(database_url: str) -> None:
    """More kept messages than fit: the ack (under 1,000 bytes) carries the oldest, the
    rest follow as msgid 6 objects in order; each exactly once, none at the next login."""
    async with running_node(database_url, ws_port=0, legacy_port=0) as node, client(node) as bob:
        async with legacy(node.legacy_ports[0]) as ann:
            ann_id = await ann.register("ann")
        await register(bob, "bob")
        await login(bob, "bob")
        texts = [f"kept message number {i}" for i in range(40)]
        for text in texts:
            await bob.call("send", to=ann_id, text=text)
        async with legacy(node.legacy_ports[0]) as ann:
            await ann.send(1, id=ann_id, password="secret")
            raw_ack = await ann.next()
            assert len(json.dumps(raw_ack, separators=(",", ":"))) < 1000
            ack = parse_ack(raw_ack)
            inline = [m["msg"] for m in ack["offlinemsg"]]
            assert 0 < len(inline) < len(texts)
            rest = [(await ann.next())["msg"] for _ in range(len(texts) - len(inline))]
            assert inline + rest == texts
            await bob.call("send", to=ann_id, text="live")
            assert (await ann.next())["msg"] == "live"  # nothing repeated before it
            await ann.send(3, id=ann_id)
            await sentinel(ann, "ann")
            ack = await ann.login(ann_id)
            assert "offlinemsg" not in ack


async def test_framing_variants_in_one_connection(sqlite_node: Node) -> None:
    """NUL, newline or nothing between requests; several in one write; one split
    across writes; replies arrive one object per line, in order."""
    port = sqlite_node.legacy_ports[0]
    async with legacy(port, end=b"") as c:
        reg = [
            json.dumps({"msgid": 4, "name": f"u{i}", "password": "pw"}).encode() for i in range(6)
        ]
        await c.send_raw(reg[0] + b"\0" + reg[1] + b"\n" + reg[2] + reg[3] + b"\r\n")
        half = len(reg[4]) // 2
        await c.send_raw(reg[4][:half])
        await trio.sleep(0.05)
        await c.send_raw(reg[4][half:] + reg[5][:3])
        await trio.sleep(0.05)
        await c.send_raw(reg[5][3:])
        ids = [(await c.next())["id"] for _ in range(6)]
        assert ids == sorted(ids) and len(set(ids)) == 6


async def test_bad_input_is_skipped_and_the_connection_stays_open(sqlite_node: Node) -> None:
    port = sqlite_node.legacy_ports[0]
    async with legacy(port) as c, client(sqlite_node) as v1:
        await register(v1, "taken")
        ann_id = await c.register("ann")
        bad = [
            b"{not json",
            b"[1,2,3]",
            b"plain text",
            b'{"msgid":"1","id":1,"password":"x"}',
            b'{"msgid":99}',
            b'{"msgid":2,"errno":0}',
            b'{"msgid":1,"id":"1","password":"secret"}',
            b'{"msgid":1,"password":"secret"}',
            b'{"msgid":6,"toid":1,"msg":"before login"}',
            b'{"msgid":4,"name":"","password":"x"}',
            b'{"msgid":6,"msg":"unclosed',
            b'{"msgid":6,"toid":1,"msg":"\\ud800"}',
        ]
        for frame in bad:
            await c.send_raw(frame)
        await sentinel(c, "taken")
        await c.login(ann_id)
        for frame in (b'{"msgid":6,"toid":"x","msg":"hi"}', b'{"msgid":6,"toid":999,"msg":"hi"}'):
            await c.send_raw(frame)
        await c.send(10, groupid=12345, msg="no such group")
        await c.send(9, groupid="one")
        await sentinel(c, "taken")
        # Still logged in and working.
        await c.send(6, toid=ann_id, msg="to myself")
        assert (await c.next())["msg"] == "to myself"


async def test_an_object_over_64_kib_closes_the_connection(sqlite_node: Node) -> None:
    async with legacy(sqlite_node.legacy_ports[0]) as c:
        await c.register("ann")
        await c.send_raw(b'{"msgid":6,"msg":"' + b"x" * MAX_LINE_BYTES + b'"}')
        assert await c.closed()
        assert c.buffer == b""  # no error reply in this protocol
    async with legacy(sqlite_node.legacy_ports[0], end=b"") as c:
        await c.send_raw(b"{" + b"x" * (MAX_LINE_BYTES + 10))  # never ends
        assert await c.closed()
