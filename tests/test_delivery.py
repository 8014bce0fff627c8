"""Delivery guarantees: offline then live, exactly once, per-sender order, under load."""

from __future__ import annotations

import json
import random
import socket
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from chat.client import ChatClient
from chat.protocol.messages import MessageEvent, UserRef
from chat.server import Node
from chat.store import StoreUnavailable
from chat.store.streams import Advance, KeptMessage, StreamRange

from .support import RawClient, client, login, next_is_sentinel, no_event, register, running_node


async def test_offline_messages_come_first_then_live(node: Node) -> None:
    async with client(node) as ann, client(node) as bob, client(node) as cat:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await register(cat, "cat")
        await login(ann, "ann")
        await login(cat, "cat")
        group = (await ann.call("create_group", name="g"))["group"]
        await bob.call("login", name="bob", password="secret")
        await bob.call("join_group", group_id=group["id"])
        await bob.call("logout")
        await cat.call("join_group", group_id=group["id"])
        sent = [
            await ann.call("send", to=bob_id, text="one"),
            await cat.call("group_send", group_id=group["id"], text="two"),
            await ann.call("send", to=bob_id, text="three"),
        ]
        await ann.next_event()  # ann gets cat's group message too
        reply = await login(bob, "bob")
        assert reply["offline"] == 3
        offline = [await bob.next_event() for _ in range(3)]
        assert [e["message_id"] for e in offline] == [s["message_id"] for s in sent]
        assert [e["offline"] for e in offline] == [True, True, True]
        assert offline[1]["type"] == "group_message" and offline[1]["group_id"] == group["id"]
        assert offline[0]["from"] == {"id": ann_id, "name": "ann"}
        live = await ann.call("send", to=bob_id, text="four")
        event = await bob.next_event()
        assert (event["message_id"], event["offline"]) == (live["message_id"], False)
        # Delivered messages are not kept: a new login finds nothing, and sends nothing.
        await bob.call("logout")
        assert (await login(bob, "bob"))["offline"] == 0
        await next_is_sentinel(bob, bob_id, sender=ann)


async def test_many_offline_messages_page_through(node: Node) -> None:
    async with client(node) as ann, client(node) as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        for i in range(450):  # more than one delivery page
            await ann.call("send", to=bob_id, text=f"m{i}")
        reply = await login(bob, "bob")
        assert reply["offline"] == 450
        texts = [(await bob.next_event())["text"] for _ in range(450)]
        assert texts == [f"m{i}" for i in range(450)]
        await next_is_sentinel(bob, bob_id, sender=ann)  # no page was delivered twice


async def collect(c: ChatClient, me: int, into: list[dict[str, Any]]) -> None:
    """Every event ``c`` gets, up to the sentinel that user ``me`` sends itself last."""
    while True:
        event = await c.events.receive()
        if (event["from"]["id"], event["text"]) == (me, "sentinel"):
            return
        into.append(event)


async def test_hundred_clients_chat_at_once(node: Node) -> None:
    """Every message is delivered exactly once and each sender's messages in order."""
    users, per_user = 100, 8
    total = users * per_user
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        clients: list[ChatClient] = []
        ids: list[tuple[str, int]] = []
        for _ in range(users):
            c = await nursery.start(_hold, client(node))
            clients.append(c)
        async with trio.open_nursery() as setup:
            for i, c in enumerate(clients):
                setup.start_soon(_register_login, c, f"user{i:03d}", ids)
        id_of = {name: uid for name, uid in ids}
        names = sorted(id_of)
        received: dict[int, list[dict[str, Any]]] = defaultdict(list)
        plan = {names[i]: [id_of[rng.choice(names)] for _ in range(per_user)] for i in range(users)}
        sent: dict[int, list[tuple[int, int]]] = defaultdict(list)  # to -> (from, message_id)

        async def chatter(i: int) -> None:
            me = id_of[names[i]]
            for n, to in enumerate(plan[names[i]]):
                reply = await clients[i].call("send", to=to, text=f"{me}:{n}")
                sent[to].append((me, reply["message_id"]))

        with trio.fail_after(60):
            async with trio.open_nursery() as readers:
                for i, c in enumerate(clients):
                    readers.start_soon(collect, c, id_of[names[i]], received[id_of[names[i]]])
                async with trio.open_nursery() as senders:
                    for i in range(users):
                        senders.start_soon(chatter, i)
                while sum(len(v) for v in received.values()) < total:  # noqa: ASYNC110 (polls many lists)
                    await trio.sleep(0.05)
                # Then nothing more: each user sends itself a sentinel, the last message
                # stored for it, and its reader stops there. A duplicate would be an
                # earlier stored message delivered again: it would come before.
                async with trio.open_nursery() as sentinels:
                    for i, c in enumerate(clients):
                        sentinels.start_soon(
                            partial(c.call, "send", to=id_of[names[i]], text="sentinel")
                        )
        nursery.cancel_scope.cancel()

    assert sum(len(v) for v in received.values()) == total
    for recipient, events in received.items():
        got = [e["message_id"] for e in events]
        assert len(got) == len(set(got)), f"duplicates for {recipient}"
        assert sorted(got) == sorted(m for _, m in sent[recipient])
        by_sender: dict[int, list[int]] = defaultdict(list)
        for e in events:
            assert e["type"] == "message" and e["to"] == recipient and e["offline"] is False
            by_sender[e["from"]["id"]].append(int(e["text"].split(":")[1]))
        for sequence in by_sender.values():
            assert sequence == sorted(sequence)


async def _hold(cm: Any, *, task_status: trio.TaskStatus[ChatClient]) -> None:
    async with cm as c:
        task_status.started(c)
        await trio.sleep_forever()


async def _register_login(c: ChatClient, name: str, ids: list[tuple[str, int]]) -> None:
    user_id = await register(c, name)
    await login(c, name)
    ids.append((name, user_id))


async def test_recipient_logging_in_and_out_gets_everything_once_in_order(node: Node) -> None:
    total = 300
    async with client(node) as ann, client(node) as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        events: list[dict[str, Any]] = []
        done_sending = trio.Event()

        async def send_all() -> None:
            for i in range(total):
                await ann.call("send", to=bob_id, text=str(i))
                if i % 5 == 0:
                    await trio.sleep(0.005)  # spread the sends over many logins
            done_sending.set()

        async def churn() -> None:
            rng = random.Random(3)
            logins = 0
            while len(events) < total:
                reply = await login(bob, "bob")
                logins += 1
                offline_expected = reply["offline"]
                with trio.move_on_after(rng.uniform(0.0, 0.05)):
                    while True:
                        events.append(await bob.events.receive())
                await bob.call("logout")
                # Everything sent before the logout reply has arrived by now.
                while True:
                    try:
                        events.append(bob.events.receive_nowait())
                    except trio.WouldBlock:
                        break
                assert offline_expected >= 0
                if done_sending.is_set() and len(events) < total:
                    await trio.sleep(0.01)
            assert logins >= 3  # the messages really arrived across logins

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            with trio.fail_after(90):
                await churn()
        got = [int(e["text"]) for e in events]
        assert got == list(range(total)), [(i, g) for i, g in enumerate(got) if g != i][:5]
        assert len({e["message_id"] for e in events}) == total
        assert (await login(bob, "bob"))["offline"] == 0
        await next_is_sentinel(bob, bob_id, sender=ann)


async def test_offline_count_matches_what_follows_while_messages_arrive(node: Node) -> None:
    """Logging in while a sender is busy: exactly `offline` events marked offline lead."""
    async with client(node) as ann, client(node) as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        for i in range(50):
            await ann.call("send", to=bob_id, text=str(i))

        async def keep_sending() -> None:
            for i in range(50, 150):
                await ann.call("send", to=bob_id, text=str(i))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_sending)
            await trio.sleep(0.02)
            reply = await login(bob, "bob")
        received = [await bob.next_event() for _ in range(150)]
        flags = [e["offline"] for e in received]
        assert reply["offline"] >= 50
        assert flags == [True] * reply["offline"] + [False] * (150 - reply["offline"])
        assert [int(e["text"]) for e in received] == list(range(150))
        await next_is_sentinel(bob, bob_id, sender=ann)


async def test_a_retried_send_wakes_recipients_the_first_attempt_did_not(node: Node) -> None:
    """The first attempt was stored but its wake-up never went out (its request was
    cut off); the retry with the same cid delivers it to the online recipient."""
    async with client(node) as ann, client(node) as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        # Once bob has one message and a moment has passed (a wake-up that raced with
        # his first read is spent), his delivery task is idle, waiting for a wake-up.
        await ann.call("send", to=bob_id, text="hello")
        assert (await bob.next_event())["text"] == "hello"
        # Quiet windows, on purpose: any message sent to bob now would wake his delivery
        # task and carry the stored one along, so no sentinel can prove "nothing yet".
        await no_event(bob, 0.3)  # the moment that lets his delivery task go idle
        stored = await node.services.store.store_direct(ann_id, bob_id, "lost wake", "c-1")
        await no_event(bob)  # the premise: without a wake-up, nothing is delivered
        retry = await ann.call("send", to=bob_id, text="lost wake", cid="c-1")
        assert retry["message_id"] == stored.message_id
        event = await bob.next_event()
        assert (event["message_id"], event["offline"]) == (stored.message_id, False)
        await ann.call("send", to=bob_id, text="lost wake", cid="c-1")
        await next_is_sentinel(bob, bob_id, sender=ann)  # written and forgotten: not again


async def test_an_idle_recipient_gets_messages_without_a_read_of_the_store(node: Node) -> None:
    """One node, recipient idle: the sender's request hands the stored message (one-to-one
    and group) straight to the recipient's outbox; the store is not read for it."""
    store = node.services.store
    async with client(node) as ann, client(node) as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        group = (await ann.call("create_group", name="pair"))["group"]["id"]
        await bob.call("join_group", group_id=group)
        await no_event(bob, 0.3)  # bob's delivery task has read once and is idle
        reads = store.reads_of_kept
        for n in range(5):
            sent = await ann.call("send", to=bob_id, text=f"direct {n}")
            event = await bob.next_event()
            assert (event["message_id"], event["offline"]) == (sent["message_id"], False)
            posted = await ann.call("group_send", group_id=group, text=f"group {n}")
            event = await bob.next_event()
            assert (event["type"], event["message_id"]) == ("group_message", posted["message_id"])
        assert store.reads_of_kept == reads
        # Written means had: a logout waits for the positions; nothing is kept.
        await bob.call("logout")
        assert await store.device_positions(bob_id, "") == {0: 5, group: 5}


async def test_a_message_read_at_login_is_not_handed_to_the_session_again(node: Node) -> None:
    """A sender's handler hands a stored message to the recipient's session after the
    store answered; by then the recipient may have logged in, been delivered that very
    message as kept, and had it deleted. Played here in slow motion: the hand-off that
    comes late must not deliver it a second time."""
    async with client(node) as ann, client(node) as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        router = node.services.router
        stored = await node.services.store.store_direct(ann_id, bob_id, "early", None)
        assert (await login(bob, "bob"))["offline"] == 1
        event = await bob.next_event()
        assert (event["message_id"], event["offline"]) == (stored.message_id, True)
        await no_event(bob, 0.3)  # written, and the delivery task idle again
        late = MessageEvent(
            stored.message_id, UserRef(ann_id, "ann"), bob_id, "early", stored.ts, False
        )
        router.deliver_direct(bob_id, late, stored.pos)
        await next_is_sentinel(bob, bob_id, sender=ann)


async def test_a_message_a_slow_read_returned_is_not_handed_to_the_session_again(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read called before a send may run its statement after the send committed (it
    waits for its batch and its thread), return the message, and have it written and
    deleted before the sender's handler offers it. Played in slow motion: the read is
    held at a gate while the message is stored; the late offer must not deliver it again."""
    store = node.services.store
    real = store.read_streams
    gate = trio.Event()

    async def slow(ranges: Sequence[StreamRange]) -> list[list[KeptMessage]]:
        await gate.wait()
        return await real(ranges)

    async with client(node) as ann, client(node) as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await no_event(bob, 0.3)  # bob's delivery task is idle
        router = node.services.router
        monkeypatch.setattr(store, "read_streams", slow)
        router.wake([bob_id])  # his read begins, and waits at the gate
        await trio.sleep(0.1)
        stored = await store.store_direct(ann_id, bob_id, "raced", None)
        gate.set()
        event = await bob.next_event()
        assert (event["message_id"], event["offline"]) == (stored.message_id, False)
        monkeypatch.setattr(store, "read_streams", real)
        await no_event(bob, 0.3)  # written, and the delivery task idle again
        late = MessageEvent(
            stored.message_id, UserRef(ann_id, "ann"), bob_id, "raced", stored.ts, False
        )
        router.deliver_direct(bob_id, late, stored.pos)
        await next_is_sentinel(bob, bob_id, sender=ann)


async def test_a_failed_store_of_positions_does_not_deliver_twice(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = node.services.store
    real = store.advance
    failures = 2  # the first attempt and the first retry

    async def flaky(moves: Sequence[Advance], seen: Mapping[tuple[int, str], int]) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise StoreUnavailable("injected: the database hiccuped")
        await real(moves, seen)

    async with client(node) as ann, client(node) as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        monkeypatch.setattr(store, "advance", flaky)
        sent = await ann.call("send", to=bob_id, text="once")
        assert (await bob.next_event())["message_id"] == sent["message_id"]
        await bob.call("logout")
        reply = await login(bob, "bob")
        assert failures == 0
        assert reply["offline"] == 0
        await next_is_sentinel(bob, bob_id, sender=ann)


async def test_logout_with_a_stuck_writer_releases_the_user(tmp_path: Path) -> None:
    """bob stops reading while megabytes are written to him, then sends ``logout``. The
    logout waits for the writer, which is stuck in a write nobody reads: the write
    deadline (``slow_client_seconds``) ends the connection, so bob is free to log in
    again, and what was not written stays kept for him. (The outbox is made too large
    to fill, so only the write deadline can end this.)"""
    async with (
        running_node(
            f"sqlite:///{tmp_path / 'stuck.db'}", slow_client_seconds=1.0, outbox_frames=100_000
        ) as node,
        client(node) as ann,
    ):
        await register(ann, "ann")
        bob_id = await register(ann, "bob")
        await login(ann, "ann")
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        await sock.connect(("127.0.0.1", node.ports[0]))
        stuck = RawClient(trio.SocketStream(sock))
        await stuck.send(b'{"type":"login","name":"bob","password":"secret"}\n')
        assert (await stuck.line())["type"] == "ok"
        text = "x" * 4000
        sent = [(await ann.call("send", to=bob_id, text=text))["message_id"] for _ in range(1500)]
        await stuck.send(b'{"type":"logout"}\n')  # never reads the answer
        async with client(node) as again:
            with trio.fail_after(30):
                while True:
                    reply = await again.request("login", name="bob", password="secret")
                    if reply["type"] == "ok":
                        break
                    assert reply["code"] == "already_online", reply
                    await trio.sleep(0.1)
            assert 0 < reply["offline"] < len(sent)  # the rest got through before it stuck
        await stuck.stream.aclose()


async def test_a_group_message_is_encoded_once_for_all_its_members(node: Node) -> None:
    names = [f"m{i}" for i in range(6)]
    async with AsyncExitStack() as stack:
        members = [await stack.enter_async_context(client(node)) for _ in names]
        for c, name in zip(members, names, strict=True):
            await register(c, name)
            await login(c, name)
        group = (await members[0].call("create_group", name="all"))["group"]
        for c in members[1:]:
            await c.call("join_group", group_id=group["id"])
        before = node.services.encoded.encoded
        sent = await members[0].call("group_send", group_id=group["id"], text="to everyone")
        for c in members[1:]:
            event = await c.next_event()
            assert (event["message_id"], event["text"]) == (sent["message_id"], "to everyone")
        assert node.services.encoded.encoded - before == 1


@pytest.mark.parametrize(("frames", "page"), [(1, 50), (2, 200), (4, 20)])
async def test_a_small_outbox_keeps_one_senders_order(
    tmp_path: Path, frames: int, page: int
) -> None:
    """A tiny outbox makes the delivery task wait for room at almost every message it
    read, while the sender pipelines a burst: a hand-off must never go in ahead of what
    the task read and has not queued yet (found in review: it did, and the message it
    overtook could be lost at a logout)."""
    total = 600
    async with (
        running_node(
            f"sqlite:///{tmp_path / 'chat.db'}", outbox_frames=frames, delivery_page=page
        ) as node,
        client(node) as ann,
        client(node) as bob,
    ):
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        lines = b"".join(
            json.dumps({"type": "send", "to": bob_id, "text": f"t{i}"}).encode() + b"\n"
            for i in range(total)
        )
        got: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(ann.send_raw, lines, replies=total))
            with trio.fail_after(60):
                while len(got) < total:
                    event = await bob.next_event()
                    if event["type"] == "message":
                        got.append(int(event["text"][1:]))
        assert got == list(range(total))
