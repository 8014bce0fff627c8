"""Running a node in production: metrics that move with traffic, /healthz and /readyz,
and the database deadline (a frozen database answers ``unavailable`` in time)."""

from __future__ import annotations

import json
import socket
from contextlib import suppress
from pathlib import Path
from typing import Any

import trio

from chat.client import ConnectionLost, connect, connect_websocket
from chat.server import Node
from chat.store import dialect_for

from .cluster_support import RedisServer, cluster_node, make_broker
from .ops_support import freezer, http_get, metrics, parse, ready, value
from .support import (
    MYSQL_URL,
    client,
    login,
    mysql_database,
    next_is_sentinel,
    raw,
    register,
    running_node,
    server_process,
)

DEADLINE = 10.0
"""Generous: the machine is shared. The readiness checks themselves take at most 3 s."""


async def wait_ready(node: Node, status: int, problem: str | None = None) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers ``status`` (naming ``problem``)."""
    with trio.fail_after(DEADLINE):
        while True:
            got, body = await ready(node)
            if got == status and (problem is None or problem in body["problems"]):
                return body
            await trio.sleep(0.1)


async def test_metrics_move_with_traffic(database_url: str) -> None:
    async with running_node(database_url, http_port=0, ws_port=0) as node:
        before = await metrics(node)
        assert value(before, "chat_connections", transport="tcp") == 0
        assert value(before, "chat_database_up") == 1
        assert ("chat_redis_up", ()) not in before  # no Redis: no gauge
        async with client(node) as ann, client(node) as bob:
            await register(ann, "ann")
            bob_id = await register(bob, "bob")
            await login(ann, "ann")
            await ann.call("send", to=bob_id, text="kept")  # read from the store at login
            assert (await login(bob, "bob"))["offline"] == 1
            assert (await bob.next_event())["text"] == "kept"
            for n in range(2):
                await ann.call("send", to=bob_id, text=f"hi {n}")
                event = await bob.next_event()
                assert event["text"] == f"hi {n}"
            await ann.request("find_user", name="nobody")
            during = await metrics(node)
            assert value(during, "chat_connections", transport="tcp") == 2
            assert value(during, "chat_users_online") == 2
            assert value(during, "chat_messages_stored_total", kind="direct") == 3
            assert value(during, "chat_deliveries_total") == 3
            assert value(during, "chat_delivery_seconds_count") == 3
            assert value(during, "chat_requests_total", type="send", outcome="ok") == 3
            assert value(during, "chat_requests_total", type="login", outcome="ok") == 2
            assert (
                value(during, "chat_requests_total", type="find_user", outcome="no_such_user") == 1
            )
            assert value(during, "chat_store_batch_size_count", kind="send") >= 1
            assert value(during, "chat_store_batch_seconds_count", kind="read") >= 1
        # Both closed: the gauges come down once the sessions have ended.
        with trio.fail_after(DEADLINE):
            while True:
                after = await metrics(node)
                if value(after, "chat_connections", transport="tcp") == 0:
                    break
                await trio.sleep(0.05)
        assert value(after, "chat_users_online") == 0


OPERATIONS_DOC = Path(__file__).parent.parent / "docs" / "operations.md"


def documented_metrics() -> dict[str, tuple[str, str]]:
    """The metrics table of docs/operations.md: name -> (type, the whole row)."""
    rows = {}
    for line in OPERATIONS_DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `chat_") and len(cells) >= 4:
            rows[cells[0].strip("`")] = (cells[1], line)
    return rows


async def test_the_metrics_table_in_the_docs_names_everything_exported(tmp_path: Path) -> None:
    documented = documented_metrics()
    async with running_node(f"sqlite:///{tmp_path}/chat.db", http_port=0) as node:
        status, body = await http_get(node.http_ports[0], "/metrics")
    assert status == 200, body
    exported = {}
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            if not name.endswith("_created"):  # prometheus_client's, described under the table
                exported[name] = kind
    assert sorted(exported.keys() - documented.keys()) == [], "exported but not in the table"
    # chat_redis_up is exported only with --redis (test_readyz_follows_redis sees it).
    # Only with --redis (this node has none).
    assert sorted(documented.keys() - exported.keys()) == [
        "chat_leases_recreated_total",
        "chat_redis_up",
    ], "documented only"
    for name, kind in exported.items():
        assert documented[name][0] == kind, name
    transports = {
        dict(labels)["transport"] for name, labels in parse(body) if name == "chat_connections"
    }
    assert transports == {"tcp", "websocket", "legacy"}
    for transport in transports:
        assert f"`{transport}`" in documented["chat_connections"][1], transport


async def test_health_endpoints(tmp_path: Path) -> None:
    async with running_node(f"sqlite:///{tmp_path}/chat.db", http_port=0) as node:
        port = node.http_ports[0]
        assert (await http_get(port, "/healthz"))[0] == 200
        assert await ready(node) == (200, {"ready": True})
        status, body = await http_get(port, "/nothing")
        assert status == 404, body
        # Not HTTP at all: a 400, not a crash.
        with trio.fail_after(DEADLINE):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"\x00\x01 nonsense\r\n\r\n")
                answer = await stream.receive_some(1000)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert (await http_get(port, "/healthz"))[0] == 200
        node.stop()
        status, readiness = await ready(node)
        assert status == 503 and readiness["problems"]["node"] == "stopping", readiness


async def test_readyz_follows_redis(mysql_url: str, redis_server: RedisServer) -> None:
    broker = make_broker(redis_server.new_url(), "node-a")
    try:
        async with running_node(mysql_url, broker=broker, node_id="node-a", http_port=0) as node:
            assert value(await metrics(node), "chat_redis_up") == 1
            await wait_ready(node, 200)
            await trio.to_thread.run_sync(redis_server.stop)
            await wait_ready(node, 503, "redis")
            assert value(await metrics(node), "chat_redis_up") == 0
            await trio.to_thread.run_sync(redis_server.start)
            await wait_ready(node, 200)
    finally:
        if redis_server.process is None:
            await trio.to_thread.run_sync(redis_server.start)
        with trio.move_on_after(5, shield=True):
            await broker.aclose()


async def test_a_frozen_database_answers_unavailable_in_time() -> None:
    dialect = dialect_for(f"{MYSQL_URL}/x")
    with mysql_database() as url:
        async with freezer(dialect.host, dialect.port) as frozen:  # type: ignore[attr-defined]
            through = url.replace(f"{dialect.host}:{dialect.port}", f"127.0.0.1:{frozen.port}")  # type: ignore[attr-defined]
            assert through != url
            async with (
                running_node(through, http_port=0, db_timeout_seconds=1.0) as node,
                client(node) as ann,
                client(node) as bob,
            ):
                await register(ann, "ann")
                bob_id = await register(bob, "bob")
                await login(ann, "ann")
                await login(bob, "bob")
                await wait_ready(node, 200)
                frozen.freeze()
                with trio.fail_after(DEADLINE):  # the deadline is 1 s
                    reply = await ann.request("send", to=bob_id, text="hello", cid="c-1")
                assert (reply["type"], reply["code"]) == ("error", "unavailable"), reply
                await wait_ready(node, 503, "database")
                assert value(await metrics(node), "chat_store_timeouts_total") >= 1
                frozen.thaw()
                await wait_ready(node, 200)
                # Safe to retry with the cid: one message, whether the first try was
                # stored after all or not.
                with trio.fail_after(DEADLINE):
                    while (again := await ann.request("send", to=bob_id, text="hello", cid="c-1"))[
                        "type"
                    ] != "ok":
                        assert again["code"] == "unavailable", again
                        await trio.sleep(0.2)
                event = await bob.next_event()
                assert event["message_id"] == again["message_id"], event
                # And only once: the next event is the sentinel.
                await next_is_sentinel(bob, bob_id, sender=ann)


async def test_cluster_nodes_show_notices(mysql_url: str, redis_url: str) -> None:
    async with (
        cluster_node(mysql_url, make_broker(redis_url, "node-a")) as a,
        cluster_node(mysql_url, make_broker(redis_url, "node-b")) as b,
        client(a) as ann,
        client(b) as bob,
    ):
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await ann.call("send", to=bob_id, text="across")
        await bob.next_event()
        # At least the wake-up for bob (a retried route may count again). The sender's
        # count moves once its worker thread's answer is back on the trio thread, which
        # may be after bob has the message: wait for it.
        with trio.fail_after(DEADLINE):
            while True:
                sent = parse(a.services.metrics.render())
                if value(sent, "chat_broker_notices_sent_total") >= 1:
                    break
                await trio.sleep(0.05)
        received = parse(b.services.metrics.render())
        assert value(received, "chat_broker_notices_received_total") >= 1, received


async def test_a_connection_that_does_not_log_in_is_closed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    async with running_node(url, login_timeout_seconds=0.5) as node, client(node) as member:
        await register(member, "ann")
        await login(member, "ann")
        idle = await raw(node)
        await idle.send(b'{"type":"ping","rid":1}\n')  # requests do not extend it
        assert (await idle.line())["type"] == "ok"
        error = await idle.line()
        assert (error["type"], error["code"]) == ("error", "login_timeout"), error
        assert "rid" not in error
        assert await idle.closed()
        # The one that logged in in time stays.
        await trio.sleep(0.6)
        assert (await member.call("ping"))["type"] == "ok"
        figures = parse(node.services.metrics.render())
        assert value(figures, "chat_login_timeouts_total") == 1


async def test_beyond_max_connections_one_error_then_close(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/chat.db"
    async with running_node(url, max_connections=2, ws_port=0) as node:
        async with client(node) as first, client(node) as second:
            await first.call("ping")
            await second.call("ping")
            extra = await raw(node)
            refused = await extra.line()
            assert (refused["type"], refused["code"]) == ("error", "unavailable"), refused
            assert await extra.closed()
            # WebSocket connections count too.
            async with connect_websocket(f"ws://127.0.0.1:{node.ws_ports[0]}/") as ws:
                refused = await ws.events.receive()
                assert refused["code"] == "unavailable", refused
        figures = parse(node.services.metrics.render())
        assert value(figures, "chat_connections_refused_total", reason="max_connections") == 2
        # Room again once they have closed.
        with trio.fail_after(DEADLINE):
            while True:
                async with client(node) as again:
                    with suppress(ConnectionLost):
                        if (await again.request("ping"))["type"] == "ok":
                            break
                await trio.sleep(0.05)


async def test_json_logs_parse(tmp_path: Path) -> None:
    async with server_process(
        tmp_path, "--database", f"sqlite:///{tmp_path}/chat.db", "--log-format", "json"
    ) as server:
        async with connect("127.0.0.1", server.port) as c:
            await c.call("ping")
        assert await server.stop() == 0
    lines = server.output().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records
    for record in records:
        assert {"time", "level", "node", "logger", "event"} <= record.keys(), record
        assert record["node"] == f"{socket.gethostname()}-{server.port}"
    events = [record["event"] for record in records]
    assert any(event.startswith("connection opened: 127.0.0.1:") for event in events), events
    assert records[-1]["event"].endswith("stopped"), records[-1]
