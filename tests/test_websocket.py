"""What only WebSocket has, with trio-websocket as the client: text and binary
messages, size limits, close codes, invalid UTF-8, mixing with TCP users, and the
listener's handshake, keepalive and plain-HTTP answers.

Every request and error code runs over WebSocket as well as TCP in
test_requests.py (the ``connect`` fixture). Nodes run in-process on port 0 with
``ws_port=0`` (the ``node`` fixture), against SQLite and a fresh MariaDB database.
The transport's own timers (handshake timeout, keepalive pings) are tested on
``serve_websocket`` directly with short values, with a handler that echoes; no
test asserts how long anything took.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
import trio
import trio_websocket
import wsproto
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from chat.cli.server import build_parser
from chat.protocol import MAX_LINE_BYTES
from chat.server import Node
from chat.transports import MessageStream, StreamClosed, serve_websocket
from chat.transports.websocket import READ_LIMIT_FACTOR, _text_frame_header

from .support import client, login, register, running_node
from .ws_support import raw_ws, ws_client


def error_code(reply: dict[str, Any]) -> str:
    assert reply["type"] == "error", reply
    assert isinstance(reply["message"], str) and reply["message"]
    return str(reply["code"])


async def exchange(ws: WebSocketConnection, message: str | bytes) -> dict[str, Any]:
    await ws.send_message(message)
    return await next_message(ws)


async def next_message(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(10):
        text = await ws.get_message()
    assert isinstance(text, str), "the server must answer with text messages"
    value: dict[str, Any] = json.loads(text)
    return value


async def close_code(ws: WebSocketConnection) -> int:
    """Wait for the server to close the connection; return the close code."""
    with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
        await ws.get_message()  # a message instead of the close fails the test
    assert closed.value.reason is not None
    return int(closed.value.reason.code)


# --- framing: text, binary and oversized messages ----------------------------------------


async def test_bad_json_keeps_the_connection(node: Node) -> None:
    """A message is the frame: unlike a TCP line, a blank one is not skipped."""
    async with raw_ws(node) as ws:
        for text in ("hello", "[]", "  ", '{"type":"ping"} x', "[" * 60_000):
            assert error_code(await exchange(ws, text)) == "bad_json"
        assert await exchange(ws, '{"type":"ping","rid":1}') == {"type": "ok", "rid": 1}


async def test_binary_message_is_bad_frame_and_the_connection_stays(node: Node) -> None:
    async with raw_ws(node) as ws:
        reply = await exchange(ws, b'{"type":"ping","rid":1}')
        assert error_code(reply) == "bad_frame" and "rid" not in reply
        assert await exchange(ws, '{"type":"ping","rid":2}') == {"type": "ok", "rid": 2}


async def test_largest_message_is_accepted(node: Node) -> None:
    request = '{"type":"ping","rid":1}'
    async with raw_ws(node) as ws:
        padded = request + " " * (MAX_LINE_BYTES - len(request))
        assert len(padded.encode()) == MAX_LINE_BYTES
        assert await exchange(ws, padded) == {"type": "ok", "rid": 1}


@pytest.mark.parametrize(
    "message",
    [
        '{"type":"ping","rid":1}' + " " * MAX_LINE_BYTES,  # one byte per character
        '{"type":"ping","rid":"' + "€" * (MAX_LINE_BYTES // 3) + '"}',  # bytes, not characters
        b"\0" * (MAX_LINE_BYTES + 1),  # binary and too large: too large wins
    ],
    ids=["ascii", "utf8", "binary"],
)
async def test_oversized_message_is_refused_and_closes(node: Node, message: str | bytes) -> None:
    async with raw_ws(node) as ws, client(node) as other:
        reply = await exchange(ws, message)
        assert error_code(reply) == "frame_too_large" and "rid" not in reply
        assert await close_code(ws) == 1009
        assert await other.request("ping") == {"type": "ok"}  # the node is fine


async def test_message_past_the_read_limit_is_cut_by_the_library(node: Node) -> None:
    """Past ``READ_LIMIT_FACTOR`` times the limit trio-websocket stops buffering and
    closes with 1009 itself, before the message could reach the session."""
    huge = " " * (READ_LIMIT_FACTOR * MAX_LINE_BYTES + 1)
    async with raw_ws(node) as ws, client(node) as other:
        await ws.send_message(huge)
        assert await close_code(ws) in (1009, 1006)  # 1006 if the close frame was lost
        assert await other.request("ping") == {"type": "ok"}


async def test_invalid_utf8_in_a_text_message_drops_the_connection(node: Node) -> None:
    """RFC 6455 makes this a WebSocket error, not a protocol one: the connection is
    failed (trio-websocket closes TCP without a close frame) instead of ``bad_json``.
    No browser can send it; over TCP the same bytes get ``bad_json``."""
    client_ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", node.ws_ports[0])
    async with stream, client(node) as other:
        await stream.send_all(client_ws.send(Request(host="127.0.0.1", target="/ws")))
        with trio.fail_after(10):
            events: list[object] = []
            while not any(isinstance(e, AcceptConnection) for e in events):
                client_ws.receive_data(await stream.receive_some(4096))
                events.extend(client_ws.events())
            payload, mask = b"\xc3\x28", b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            await stream.send_all(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
            received = b""
            while data := await stream.receive_some(4096):
                received += data
        client_ws.receive_data(received)
        assert not any(e for e in client_ws.events() if not isinstance(e, CloseConnection))
        assert await other.request("ping") == {"type": "ok"}


# --- TCP and WebSocket users together ------------------------------------------------


async def test_tcp_and_websocket_users_chat(node: Node) -> None:
    async with client(node) as tcp, ws_client(node) as web, client(node) as tina:
        tcp_id = await register(tcp, "tcp-tom")
        web_id = await register(web, "web-wendy")
        await register(tina, "tcp-tina")
        await login(tcp, "tcp-tom")
        await login(web, "web-wendy")
        await login(tina, "tcp-tina")
        await tcp.call("add_friend", user_id=web_id)
        assert (await web.next_event())["type"] == "friend_added"

        to_web = await tcp.call("send", to=web_id, text="from a terminal")
        event = await web.next_event()
        assert (event["message_id"], event["from"]["id"], event["text"]) == (
            to_web["message_id"],
            tcp_id,
            "from a terminal",
        )
        to_tcp = await web.call("send", to=tcp_id, text="from a browser ✓")
        event = await tcp.next_event()
        assert (event["message_id"], event["from"]["id"], event["text"]) == (
            to_tcp["message_id"],
            web_id,
            "from a browser ✓",
        )

        # One group message to members on both transports (encoded once per codec).
        group = (await web.call("create_group", name="mixed"))["group"]
        await tcp.call("join_group", group_id=group["id"])
        await tina.call("join_group", group_id=group["id"])
        posted = await tcp.call("group_send", group_id=group["id"], text="all transports")
        for member in (web, tina):
            event = await member.next_event()
            assert (event["type"], event["message_id"], event["text"]) == (
                "group_message",
                posted["message_id"],
                "all transports",
            )


async def test_stopping_the_node_closes_websocket_sessions(database_url: str) -> None:
    connected, closed = trio.Event(), trio.Event()
    codes: list[int] = []

    async def hold(node: Node) -> None:
        async with raw_ws(node) as ws:
            assert await exchange(ws, '{"type":"ping"}') == {"type": "ok"}
            connected.set()
            codes.append(await close_code(ws))
            closed.set()

    async with trio.open_nursery() as nursery:
        async with running_node(database_url, ws_port=0) as node:
            nursery.start_soon(hold, node)
            with trio.fail_after(10):
                await connected.wait()
        with trio.fail_after(10):
            await closed.wait()
    assert codes == [1000]  # a clean close from the server, not a cut connection


# --- the listener on its own: handshake, keepalive, plain HTTP --------------------------


async def echo(stream: MessageStream) -> None:
    """A handler that echoes text and reports how the stream ended."""
    try:
        while True:
            frame = await stream.receive()
            await stream.send([frame if isinstance(frame, bytes) else frame.encode()])
    except StreamClosed:
        pass


async def start_listener(nursery: trio.Nursery, handler: Any = echo, **options: Any) -> int:
    """Run ``serve_websocket`` in ``nursery`` on a fresh port; return the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(
        partial(serve_websocket, handler, listeners, handler_nursery=nursery, **options)
    )
    return int(listeners[0].socket.getsockname()[1])


async def test_handshake_timeout_closes_a_silent_connection() -> None:
    async with trio.open_nursery() as nursery:
        port = await start_listener(nursery, handshake_timeout=0.2)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(10):
            assert await stream.receive_some(1024) == b""  # closed without a word
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_plain_http_gets_400() -> None:
    async with trio.open_nursery() as nursery:
        port = await start_listener(nursery, handshake_timeout=0.5)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        with trio.fail_after(10):  # up to the status line's end: one read may hold less
            while b"\r\n" not in answer and (chunk := await stream.receive_some(4096)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_peer_that_does_not_answer_pings_is_disconnected() -> None:
    ended = trio.Event()

    async def wait_for_end(stream: MessageStream) -> None:
        try:
            await stream.receive()
        except StreamClosed:
            ended.set()

    async with trio.open_nursery() as nursery:
        port = await start_listener(nursery, wait_for_end, ping_interval=0.1, ping_timeout=0.2)
        # A client made of bare wsproto: it completes the handshake, then never reads.
        client_ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(client_ws.send(Request(host="127.0.0.1", target="/")))
        with trio.fail_after(10):
            accepted = False
            while not accepted:
                client_ws.receive_data(await stream.receive_some(4096))
                accepted = any(isinstance(e, AcceptConnection) for e in client_ws.events())
            await ended.wait()
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_peer_that_answers_pings_stays() -> None:
    async with trio.open_nursery() as nursery:
        port = await start_listener(nursery, ping_interval=0.05, ping_timeout=1.0)
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            await trio.sleep(0.5)  # several pings, all answered by the client library
            assert await ws_echo(ws, "still here") == "still here"
        nursery.cancel_scope.cancel()


async def ws_echo(ws: WebSocketConnection, text: str) -> str | bytes:
    await ws.send_message(text)
    with trio.fail_after(10):
        return await ws.get_message()


# --- the command line ---------------------------------------------------------------


def test_ws_port_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAT_WS_PORT", raising=False)
    assert build_parser().parse_args(["serve"]).ws_port is None
    assert build_parser().parse_args(["serve", "--ws-port", "6080"]).ws_port == 6080
    monkeypatch.setenv("CHAT_WS_PORT", "6082")
    assert build_parser().parse_args(["serve"]).ws_port == 6082
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--ws-port", "70000"])


async def test_frames_written_together_arrive_whole_and_in_order(node: Node) -> None:
    """The writer joins queued frames into one write of text messages it frames itself:
    short, 16-bit and multi-byte lengths, many at once, each arrives whole."""
    texts = [f"{n}:" + "é€😀x"[n % 4] * (n * 37 % 4090) for n in range(120)]
    async with client(node) as ann, ws_client(node) as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        async with trio.open_nursery() as nursery:  # pipelined: they queue up together
            for text in texts:
                nursery.start_soon(partial(ann.call, "send", to=bob_id, text=text))
        got = [(await bob.next_event())["text"] for _ in texts]
    assert sorted(got) == sorted(texts)


@pytest.mark.parametrize("length", [0, 125, 126, 65_535, 65_536, 70_000])
def test_text_frame_header_is_what_a_websocket_client_reads(length: int) -> None:
    payload = ("é" * (length // 2) + "x" * (length % 2)).encode()
    assert len(payload) == length
    client_side = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server_side = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server_side.receive_data(client_side.send(Request(host="x", target="/")))
    for _ in server_side.events():
        pass
    client_side.receive_data(server_side.send(AcceptConnection()))
    for _ in client_side.events():
        pass
    client_side.receive_data(_text_frame_header(len(payload)) + payload)
    (message,) = list(client_side.events())
    assert isinstance(message, TextMessage) and message.message_finished
    assert message.data.encode() == payload
