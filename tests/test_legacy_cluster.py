"""Legacy clients in a cluster: chat with protocol v1 users on other nodes, and kept
messages that outlive a node killed with ``kill -9``."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import trio

from .cluster_support import (
    DEADLINE,
    LEASE_SECONDS,
    cluster_node,
    dial,
    make_broker,
    nginx_proxy,
    two_nodes,
)
from .legacy_support import LegacyClient, legacy, parse_ack
from .support import free_port, login, register, server_process


async def test_legacy_and_v1_users_chat_across_nodes(mysql_url: str, redis_url: str) -> None:
    async with (
        two_nodes(mysql_url, redis_url, legacy_port=0) as (a, b),
        legacy(a.legacy_ports[0]) as ann,
        dial(b.ports[0]) as bob,
    ):
        ann_id = await ann.register("ann")
        bob_id = await register(bob, "bob")
        await login(bob, "bob")
        await ann.login(ann_id)
        group = await bob.call("create_group", name="club")
        group_id = group["group"]["id"]
        await ann.send(9, id=ann_id, groupid=group_id)
        for i in range(20):
            await ann.send(6, id=ann_id, name="ann", toid=bob_id, msg=f"a{i}", time="")
            await bob.call("send", to=ann_id, text=f"b{i}")
        await ann.send(10, id=ann_id, name="ann", groupid=group_id, msg="to the club", time="")
        await bob.call("group_send", group_id=group_id, text="club reply")
        got = [await ann.next() for _ in range(21)]
        assert [g["msg"] for g in got] == [f"b{i}" for i in range(20)] + ["club reply"]
        assert {(g["msgid"], g["id"], g["name"]) for g in got[:20]} == {(6, bob_id, "bob")}
        assert (got[20]["msgid"], got[20]["groupid"]) == (10, group_id)
        texts: list[str] = []
        while len(texts) < 21:
            event = await bob.next_event(DEADLINE)
            if event["type"] in ("message", "group_message"):
                assert event["from"] == {"id": ann_id, "name": "ann"}
                texts.append(event["text"])
        assert texts == [f"a{i}" for i in range(20)] + ["to the club"]


async def login_when_free(c: LegacyClient, user_id: int) -> dict[str, Any]:
    """Log in, retrying while the user is still held by a dead node's lease (errno 2)."""
    with trio.fail_after(DEADLINE):
        while True:
            await c.send(1, id=user_id, password="secret")
            ack = await c.next()
            if ack["errno"] == 0:
                return parse_ack(ack)
            assert ack["errno"] == 2, ack
            await trio.sleep(0.2)


async def test_kept_messages_outlive_a_killed_node(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    """ann (legacy) is on node a when it is killed; what bob sends her meanwhile is kept,
    and her next login (on node b) gets all of it, once each, in order."""
    legacy_port = free_port()
    async with (
        server_process(
            tmp_path,
            *("--host", "127.0.0.1", "--node-id", "node-a", "--legacy-port", str(legacy_port)),
            *("--database", mysql_url, "--redis", redis_url),
            *("--lease-seconds", str(LEASE_SECONDS)),
            name="node-a",
        ) as a,
        cluster_node(mysql_url, make_broker(redis_url, "node-b"), legacy_port=0) as b,
        dial(b.ports[0]) as bob,
    ):
        async with legacy(legacy_port) as ann:
            ann_id = await ann.register("ann")
            await ann.login(ann_id)
            await register(bob, "bob")
            await login(bob, "bob")
            await bob.call("send", to=ann_id, text="before")
            assert (await ann.next())["msg"] == "before"
            assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
        texts = [f"while down {i}" for i in range(30)]
        for text in texts:
            await bob.call("send", to=ann_id, text=text)
        async with legacy(b.legacy_ports[0]) as ann:
            ack = await login_when_free(ann, ann_id)
            got = [m["msg"] for m in ack.get("offlinemsg", [])]
            assert got
            # "before" was written by the killed node; its deletion may not have
            # committed (the protocol allows one repeat after a crash, never a loss).
            again = got[0] == "before"
            while len(got) < len(texts) + again:
                got.append((await ann.next())["msg"])
            assert got[again:] == texts
            await bob.call("send", to=ann_id, text="after")
            assert (await ann.next())["msg"] == "after"


async def test_legacy_clients_through_nginx(mysql_url: str, redis_url: str, tmp_path: Path) -> None:
    """The shipped nginx config balances the legacy port too (with the PROXY protocol)."""
    legacy_port = free_port()
    async with (
        two_nodes(mysql_url, redis_url, proxy_protocol=True, legacy_port=0) as (a, b),
        nginx_proxy(
            (a.ports[0], b.ports[0]),
            tmp_path / "nginx",
            legacy=(legacy_port, (a.legacy_ports[0], b.legacy_ports[0])),
        ),
        legacy(legacy_port) as ann,
        legacy(legacy_port) as bob,
    ):
        ann_id = await ann.register("ann")
        bob_id = await bob.register("bob")
        await ann.login(ann_id)
        await bob.login(bob_id)
        await ann.send(6, id=ann_id, name="ann", toid=bob_id, msg="via nginx", time="")
        got = await bob.next()
        assert (got["id"], got["msg"]) == (ann_id, "via nginx")
