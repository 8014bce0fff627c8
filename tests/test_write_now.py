"""A delivered message written at once by the task that hands it over (``deliver_nowait``),
when the connection's writer is idle: the frames still leave in the order handed over,
each exactly once, and the hooks are told exactly which left, also when the socket takes
only part of a write and the writer finishes it (over a real socket pair, with a reader
that stalls so the kernel's buffer fills)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import NamedTuple

import trio

from chat.protocol.codec import JsonCodec
from chat.server.connection import Connection, Outgoing, gathered_writes
from chat.server.settings import Settings
from chat.transports import LineStream


class Hooks:
    def __init__(self) -> None:
        self.order: list[int] = []

    def writable(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        return outgoing

    def written(self, outgoing: Sequence[Outgoing]) -> None:
        self.order.extend(item.seq for item in outgoing)


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Both ends of a TCP connection over the loopback (as a node's clients have)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return server, client


def frame(number: int, size: int) -> Outgoing:
    payload = json.dumps({"n": number, "pad": "x" * size}).encode()
    return Outgoing(payload, seq=number)


class Writing(NamedTuple):
    connection: Connection
    hooks: Hooks
    client: trio.SocketStream
    nursery: trio.Nursery


@asynccontextmanager
async def idle_writer() -> AsyncIterator[Writing]:
    """A connection over a real TCP pair, its writer task running and idle; as the block
    ends its outbox is closed and the writer (and anything the block started in the
    nursery) is waited for."""
    server, client = await tcp_pair()
    connection = Connection(LineStream(server, "test"), JsonCodec(), Settings(), "test")
    hooks = Hooks()
    connection.hooks = hooks
    try:
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def writer() -> None:
                with scope:
                    await connection.run_writer(scope)

            nursery.start_soon(writer)
            await trio.sleep(0.01)  # the writer waits: idle
            yield Writing(connection, hooks, client, nursery)
            connection.close_outbox()
    finally:
        await client.aclose()
        await server.aclose()


async def test_order_and_exactly_once_with_partial_writes() -> None:
    total = 400
    received: list[int] = []

    async def read_all(client: trio.SocketStream) -> None:
        buffer = b""
        await trio.sleep(0.2)  # stalled at first: the socket's buffer fills
        while len(received) < total:
            data = await client.receive_some(65_536)
            assert data
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            received.extend(json.loads(line)["n"] for line in lines)

    async with idle_writer() as (connection, hooks, client, nursery):
        nursery.start_soon(read_all, client)
        number = 0
        while number < total:
            # Some handed over at once (written now or given to the writer), some
            # queued by the writer's own path, with schedule points in between.
            for _ in range(3):
                number += 1
                if number <= total:
                    item = frame(number, 100_000 if number % 7 else 10)
                    if not connection.deliver_nowait(item):  # the outbox is full: wait
                        assert await connection.queue(item)
            number += 1
            if number <= total:
                assert await connection.queue(frame(number, 300))
            await trio.sleep(0.001 if number % 5 else 0)
        await connection.flush()
    assert connection.remainders > 0, "no write was cut short: the test missed its case"
    assert received == list(range(1, total + 1))
    assert hooks.order == list(range(1, total + 1))


async def test_a_message_to_an_idle_writer_is_written_without_waking_it() -> None:
    async with idle_writer() as (connection, hooks, client, _):
        assert connection.deliver_nowait(frame(1, 10))
        # Written before any schedule point: the writer task did not run.
        assert hooks.order == [1]
        data = await client.receive_some(65_536)
        assert json.loads(data.split(b"\n")[0])["n"] == 1
        # The next one within the gathering time goes to the writer, not at once.
        assert connection.deliver_nowait(frame(2, 10))
        assert hooks.order == [1]
        await connection.flush()
        assert hooks.order == [1, 2]


async def test_messages_handed_over_in_a_gathered_stretch_leave_in_one_write_at_its_end() -> None:
    """A store batch hands a recipient several messages in one stretch (no checkpoint):
    inside ``gathered_writes`` they are held and written together as it ends, in
    order, without waking the writer; a frame queued meanwhile by the writer's path
    (a reply) goes after them."""
    async with idle_writer() as (connection, hooks, client, _):
        sends_before = connection.stream.frames_sent
        with gathered_writes():
            for number in (1, 2, 3):
                assert connection.deliver_nowait(frame(number, 10))
            assert hooks.order == []  # held until the stretch ends
        # Written as it ended, before any schedule point: not by the writer task.
        assert hooks.order == [1, 2, 3]
        assert connection.stream.frames_sent - sends_before == 3
        data = b""
        while data.count(b"\n") < 3:
            data += await client.receive_some(65_536)
        assert [json.loads(line)["n"] for line in data.split(b"\n")[:3]] == [1, 2, 3]

        await trio.sleep(0.01)  # past the gathering time of the last write
        with gathered_writes():
            assert connection.deliver_nowait(frame(4, 10))
            assert connection.queue_nowait(frame(5, 10))  # the writer's path: after 4
            assert connection.deliver_nowait(frame(6, 10))
        await connection.flush()
        assert hooks.order == [1, 2, 3, 4, 5, 6]
