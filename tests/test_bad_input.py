"""Bad input gets its error, never crashes the node, and never disturbs other clients."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio

from chat.protocol import MAX_LINE_BYTES
from chat.server import Node

from .support import RawClient, client, login, raw, register, running_node


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"hello\n", "bad_json"),
        (b"{'type': 'ping'}\n", "bad_json"),
        (b'{"type":"ping"} trailing\n', "bad_json"),
        (b"[]\n", "bad_json"),
        (b"123\n", "bad_json"),
        (b'"ping"\n', "bad_json"),
        (b"\xc3\x28\n", "bad_json"),
        (b'{"type":"ping","x":"\xed\xa0\x80"}\n', "bad_json"),  # an encoded surrogate
        (b'{"type":"ping","n":NaN}\n', "bad_json"),
        (b'{"type":"dance"}\n', "unknown_type"),
        (b'{"type":null}\n', "invalid_request"),
        (b'{"type":"send","to":{"id":1},"text":"x"}\n', "invalid_request"),
        (b'{"type":"register","name":["a"],"password":"p"}\n', "invalid_request"),
        (b'{"type":"ping","rid":[1]}\n', "invalid_request"),
        (b"[" * 60_000 + b"\n", "bad_json"),  # deep nesting within the size limit
    ],
)
async def test_each_bad_frame_gets_its_error_and_the_connection_stays(
    node: Node, data: bytes, code: str
) -> None:
    c = await raw(node)
    await c.send(data)
    reply = await c.line()
    assert (reply["type"], reply["code"]) == ("error", code)
    assert "rid" not in reply
    await c.send(b'{"type":"ping","rid":"after"}\n')
    assert await c.line() == {"type": "ok", "rid": "after"}


async def test_blank_lines_and_crlf(node: Node) -> None:
    c = await raw(node)
    await c.send(b'\n   \r\n\t\n{"type":"ping","rid":1}\r\n')
    assert await c.line() == {"type": "ok", "rid": 1}


async def test_frames_split_inside_a_character(node: Node) -> None:
    c = await raw(node)
    data = json.dumps({"type": "register", "name": "Ωmega", "password": "p"}).encode()
    data = data.replace(b"\\u03a9", "Ω".encode())
    assert "Ω".encode() in data
    cut = data.index("Ω".encode()) + 1
    await c.send(data[:cut])
    await trio.sleep(0.05)
    await c.send(data[cut:] + b"\n")
    reply = await c.line()
    assert reply["user"]["name"] == "Ωmega"


async def test_largest_frame_is_accepted(node: Node) -> None:
    c = await raw(node)
    prefix, suffix = b'{"type":"ping","pad":"', b'"}'
    frame = prefix + b"x" * (MAX_LINE_BYTES - len(prefix) - len(suffix)) + suffix
    assert len(frame) == MAX_LINE_BYTES
    await c.send(frame + b"\r\n")
    assert await c.line() == {"type": "ok"}


async def test_oversized_frame_is_refused_and_closes(node: Node) -> None:
    c = await raw(node)
    await c.send(b'{"type":"ping","rid":1}\n')
    await c.send(b'{"type":"ping","pad":"' + b"x" * MAX_LINE_BYTES + b'"}\n')
    assert await c.line() == {"type": "ok", "rid": 1}
    reply = await c.line()
    assert (reply["type"], reply["code"]) == ("error", "frame_too_large")
    assert await c.closed()


async def test_endless_line_is_cut_without_waiting_for_its_end(node: Node) -> None:
    """A line with no newline is refused once it passes the limit, not buffered forever."""
    c = await raw(node)
    with trio.move_on_after(5):
        try:
            for _ in range(40):  # 2.5 MiB, never a newline
                await c.send(b"y" * 65536)
        except trio.BrokenResourceError:
            pass  # the server stopped listening: that is the point
    reply = await c.line()
    assert reply["code"] == "frame_too_large"
    assert await c.closed()


async def test_bad_clients_do_not_disturb_others(node: Node) -> None:
    async with client(node) as ann, client(node) as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        bad = [await raw(node) for _ in range(5)]
        for i, c in enumerate(bad):
            await c.send([b"\xff\n", b"[]\n", b'{"type":7}\n', b"{\n", b'{"type":"x"}\n'][i])
        oversized = await raw(node)
        await oversized.send(b"z" * (MAX_LINE_BYTES + 10) + b"\n")
        half_open = await raw(node)
        await half_open.send(b'{"type":"pi')  # then never finishes
        for c in bad:
            assert (await c.line())["type"] == "error"
        assert (await oversized.line())["code"] == "frame_too_large"
        sent = await ann.call("send", to=bob_id, text="still here")
        assert (await bob.next_event())["message_id"] == sent["message_id"]
        await half_open.stream.aclose()
        assert await ann.call("ping") == {"type": "ok"}


async def test_abrupt_disconnects_release_the_user(node: Node) -> None:
    async with client(node) as c:
        await register(c, "ann")
    for _ in range(3):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", node.ports[0]))
        ann = RawClient(trio.SocketStream(sock))
        with trio.fail_after(5):
            while True:
                # The previous round's clean logout may still be under way on the node.
                await ann.send(b'{"type":"login","name":"ann","password":"secret"}\n')
                reply = await ann.line()
                if reply["type"] == "ok":
                    break
                assert reply["code"] == "already_online", reply
                await trio.sleep(0.05)
        # A reset instead of a clean close.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        with trio.fail_after(5):
            while True:
                async with client(node) as again:
                    reply = await again.request("login", name="ann", password="secret")
                if reply["type"] == "ok":
                    break
                assert reply["code"] == "already_online"
                await trio.sleep(0.05)


async def test_a_client_that_stops_reading_is_disconnected_and_loses_nothing(
    tmp_path: Any,
) -> None:
    """The outbox is bounded: a stalled reader is cut off, its messages stay kept."""
    total, text = 1500, "x" * 4000
    url = f"sqlite:///{tmp_path / 'slow.db'}"
    async with (
        running_node(url, outbox_frames=8, slow_client_seconds=0.5) as node,
        client(node) as ann,
    ):
        await register(ann, "ann")
        bob_id = await register(ann, "bob")
        await login(ann, "ann")
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", node.ports[0]))
        stalled = trio.SocketStream(sock)
        await stalled.send_all(b'{"type":"login","name":"bob","password":"secret"}\n')
        received = bytearray()
        with trio.fail_after(10):
            while b"\n" not in received:
                received += await stalled.receive_some(1 << 20)
        assert json.loads(received.split(b"\n", 1)[0])["type"] == "ok", bytes(received)
        for i in range(total):
            await ann.call("send", to=bob_id, text=f"{i:05d}{text}")
        # The server gives up on bob: reading now finds the end of the stream.
        with trio.fail_after(30):
            while True:
                try:
                    chunk = await stalled.receive_some(1 << 20)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
        # The last line may be cut short: the server gave up in the middle of a write.
        complete, _, _partial = bytes(received).rpartition(b"\n")
        lines = [json.loads(line) for line in complete.split(b"\n") if line.strip()]
        first = [int(e["text"][:5]) for e in lines if e.get("type") == "message"]
        assert len(first) < total, "bob was never cut off"
        async with client(node) as bob:
            reply = await login(bob, "bob")
            rest = [int((await bob.next_event())["text"][:5]) for _ in range(reply["offline"])]
        # Nothing lost, in order: what was written is not kept, the rest is.
        assert first + rest == list(range(total))
