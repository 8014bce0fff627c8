"""Sends a client writes without waiting for their answers (pipelined): stored together,
answered in order, delivered in order, and never a gap when the connection dies."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from chat.client import ChatClient
from chat.server import Node

from .support import client, login, next_is_sentinel, register, running_node
from .ws_support import Connect


def lines(*requests: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(request).encode() + b"\n" for request in requests)


async def test_pipelined_sends_are_stored_together_and_answered_in_order(
    connect: Connect, node: Node, request: pytest.FixtureRequest
) -> None:
    async with connect() as ann, connect() as bob:
        ann_id, bob_id = await register(ann, "ann"), await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        group = (await ann.call("create_group", name="tea"))["group"]["id"]
        await bob.call("join_group", group_id=group)
        requests: list[dict[str, Any]] = []
        for n in range(40):
            if n == 7:
                requests.append({"type": "send", "to": 999_999, "text": "lost", "rid": n})
            elif n == 12:
                requests.append({"type": "group_send", "group_id": group, "text": "g", "rid": n})
            elif n == 15:
                requests.append({"type": "group_send", "group_id": 999_999, "text": "x", "rid": n})
            else:
                requests.append({"type": "send", "to": bob_id, "text": f"m{n}", "rid": n})
        # Not pipelined: answered after every send before it, and sees them all.
        requests.append({"type": "history", "with": bob_id, "limit": 100, "rid": "h"})
        batches_before = node.services.store.send_batches
        replies = await ann.send_raw(lines(*requests), replies=len(requests))
        batches = node.services.store.send_batches - batches_before

        assert [r.get("rid") for r in replies] == [*range(40), "h"]
        assert (replies[7]["code"], replies[15]["code"]) == ("no_such_user", "no_such_group")
        stored = [int(r["message_id"]) for r in replies[:40] if r["type"] == "ok"]
        assert len(stored) == 38 and stored == sorted(stored), replies
        # One by one, each send would be a transaction of its own. (Over WebSocket the
        # session sees at most one message read ahead, so it pipelines less.)
        if request.node.callspec.params["connect"] == "tcp":
            assert batches <= len(requests) // 4, batches
        assert batches < len(requests) - 1, batches
        direct = [int(r["message_id"]) for n, r in enumerate(replies[:40]) if n not in (7, 12, 15)]
        assert [int(m["message_id"]) for m in replies[-1]["messages"]] == direct
        got = [await bob.next_event() for _ in stored]
        assert [int(e["message_id"]) for e in got] == stored
        assert [e["type"] for e in got].count("group_message") == 1
        await next_is_sentinel(bob, bob_id, ann)
        assert ann_id != bob_id


@pytest.mark.parametrize("how", ["reset", "stalled"])
async def test_a_connection_cut_off_mid_pipeline_leaves_no_gap(how: str, tmp_path: Path) -> None:
    """A client writes many sends and then resets the connection, or never reads its
    answers (the server cuts it off once its writes stall). Whatever the server read
    was started, and each started send is stored and delivered: the recipient gets
    the first k of them, in order, and the store keeps exactly those (a send taken
    back while a later one was stored would be a gap; one stored and never handed
    to its online recipient would be kept but not delivered)."""
    url = f"sqlite:///{tmp_path / 'pipeline.db'}"
    async with (
        running_node(url, outbox_frames=8, slow_client_seconds=0.3) as node,
        client(node) as ann,
        client(node) as bob,
    ):
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(bob, "bob")
        last = 0  # the previous attempt's sentinel
        for attempt in range(3):
            texts = [f"{attempt}:{n}" for n in range(150 if how == "reset" else 1500)]
            await _send_and_go(node, how, bob_id, texts)
            async with client(node) as again:
                await _login_once_free(again, "ann")
                sentinel = await again.call("send", to=bob_id, text="sentinel")
                delivered = []
                while True:
                    event = await bob.next_event()
                    if event["message_id"] == sentinel["message_id"]:
                        break
                    delivered.append(event["text"])
                assert delivered == texts[: len(delivered)], delivered
                if how == "stalled":
                    assert len(delivered) < len(texts), "never cut off"
                kept = await _history_after(again, bob_id, last)
                assert kept == [*delivered, "sentinel"]
                last = sentinel["message_id"]
                await again.call("logout")


async def test_a_closing_session_still_answers_its_started_sends_in_order(tmp_path: Path) -> None:
    """The node asks a session to close (shutting down, or the user evicted) while the
    client pipelines sends and reads nothing, so the reader waits for the answerer and
    the answerer for room in the outbox. The send the reader holds is started: it must
    still be stored *and* handed to the online recipient, in its turn, however long the
    answerer takes (here longer than the close grace)."""
    url = f"sqlite:///{tmp_path / 'closing.db'}"
    async with (
        running_node(url, outbox_frames=8, slow_client_seconds=2, close_grace_seconds=0.5) as node,
        client(node) as ann,
        client(node) as bob,
    ):
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(bob, "bob")
        _, stream = await _raw_login(node, "ann", small_window=True)
        texts = [f"m{n}" for n in range(3000)]
        sends = lines(*({"type": "send", "to": bob_id, "text": text} for text in texts))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write_until_refused, stream, sends)
            await trio.sleep(0.5)  # the pipeline is full, the outbox too
            (session,) = [
                s
                for s in node._sessions
                if s.user_session.user is not None and s.user_session.user.name == "ann"
            ]
            session.request_close()
        async with client(node) as again:
            await _login_once_free(again, "ann")
            # Bob gets everything stored so far; then, idle, the sentinel is handed to
            # him directly: a send stored with it but never handed over would show in
            # the history and not in what he got.
            stored = await _history_after(again, bob_id, 0)
            delivered = [(await bob.next_event())["text"] for _ in stored]
            assert delivered == stored == texts[: len(stored)]
            sentinel = await again.call("send", to=bob_id, text="sentinel")
            event = await bob.next_event()
            assert event["message_id"] == sentinel["message_id"], event
            assert await _history_after(again, bob_id, 0) == [*delivered, "sentinel"]
        await stream.aclose()


async def _write_until_refused(stream: trio.SocketStream, data: bytes) -> None:
    with trio.move_on_after(10), contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(data)


async def _send_and_go(node: Node, how: str, to: int, texts: list[str]) -> None:
    """Log in as ann on a raw socket, write every send at once, and go (see the test)."""
    sock, stream = await _raw_login(node, "ann", small_window=how == "stalled")
    sends = lines(*({"type": "send", "to": to, "text": text} for text in texts))
    if how == "reset":
        await stream.send_all(sends)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset: what the server has not read yet is gone
        return
    with trio.fail_after(30):
        try:
            await stream.send_all(sends)  # never reading: the server stops reading too
            await trio.sleep(1)  # long enough to be cut off
            while await stream.receive_some(65536):  # what was written before the end
                pass
        except trio.BrokenResourceError:
            pass
    await stream.aclose()


async def _raw_login(
    node: Node, name: str, *, small_window: bool
) -> tuple[trio.socket.SocketType, trio.SocketStream]:
    """A raw connection logged in as ``name``; ``small_window``: a 4 KB receive buffer,
    so that a client that reads nothing stalls the server's writes soon."""
    sock = trio.socket.socket()
    if small_window:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", node.ports[0]))
    stream = trio.SocketStream(sock)
    await stream.send_all(lines({"type": "login", "name": name, "password": "secret"}))
    reply = await _line(stream)
    assert reply["type"] == "ok", reply
    return sock, stream


async def _history_after(c: ChatClient, with_id: int, after: int) -> list[str]:
    """The texts of every message with ``with_id`` after ``after``, paging forward."""
    texts: list[str] = []
    while True:
        reply = await c.call("history", **{"with": with_id}, after=after, limit=200)
        texts += [m["text"] for m in reply["messages"]]
        if not reply["more"]:
            return texts
        after = reply["messages"][-1]["message_id"]


async def _login_once_free(c: ChatClient, name: str) -> None:
    """Log in as soon as the cut-off connection has let go of the user."""
    with trio.fail_after(10):
        while True:
            reply = await c.request("login", name=name, password="secret")
            if reply["type"] == "ok":
                return
            assert reply["code"] == "already_online", reply
            await trio.sleep(0.02)


async def _line(stream: trio.SocketStream) -> dict[str, Any]:
    data = b""
    with trio.fail_after(10):
        while b"\n" not in data:
            data += await stream.receive_some(65536)
    value: dict[str, Any] = json.loads(data.split(b"\n", 1)[0])
    return value
