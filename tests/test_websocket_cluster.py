"""WebSocket in the cluster: TCP and WebSocket users on different nodes, and nginx.

Only what WebSocket adds: the cluster itself (friends, offline delivery, presence,
moving between nodes, fan-out) is tested over TCP in test_cluster.py, and every
request over WebSocket in test_requests.py.

Two in-process nodes share a MariaDB database and a private redis-server (the
shared Redis on 6379 is never touched). nginx runs from infra/nginx/nginx.conf
with every port moved to a free one, its ``root`` pointing at web/.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from chat.server import Node

from .cluster_support import REPO, make_broker, run_nginx
from .support import client, free_port, login, register, running_node
from .ws_support import render_web_conf, ws_client

DEADLINE = 20.0


@asynccontextmanager
async def ws_node(database_url: str, redis_url: str, node_id: str) -> AsyncIterator[Node]:
    """An in-process node on the Redis broker, with TCP and WebSocket on port 0."""
    broker = make_broker(redis_url, node_id)
    try:
        async with running_node(database_url, broker=broker, node_id=node_id, ws_port=0) as node:
            yield node
    finally:
        with trio.move_on_after(5, shield=True):
            await broker.aclose()


def logged_in(node: Node) -> set[str]:
    return {s.user.name for s in node.router.sessions() if s.user is not None}


async def test_tcp_and_websocket_users_chat_across_nodes(mysql_url: str, redis_url: str) -> None:
    """Each kind of event crosses nodes from TCP to WebSocket (and a message back): a
    pushed friend_added, a direct and a group message. Offline delivery across nodes
    does not involve the transport: test_cluster.py has it, over TCP."""
    async with (
        ws_node(mysql_url, redis_url, "node-a") as a,
        ws_node(mysql_url, redis_url, "node-b") as b,
        client(a) as tcp,
        ws_client(b) as web,
    ):
        tcp_id = await register(tcp, "terminal")
        web_id = await register(web, "browser")
        await login(tcp, "terminal")
        await login(web, "browser")
        await tcp.call("add_friend", user_id=web_id)
        event = await web.next_event(DEADLINE)
        assert event["type"] == "friend_added" and event["friend"]["online"] is True

        sent = await tcp.call("send", to=web_id, text="A -> B over TCP then WebSocket")
        event = await web.next_event(DEADLINE)
        assert event["message_id"] == sent["message_id"] and event["from"]["id"] == tcp_id
        sent = await web.call("send", to=tcp_id, text="B -> A over WebSocket then TCP")
        event = await tcp.next_event(DEADLINE)
        assert event["message_id"] == sent["message_id"] and event["from"]["id"] == web_id

        group = (await web.call("create_group", name="across"))["group"]
        await tcp.call("join_group", group_id=group["id"])
        posted = await tcp.call("group_send", group_id=group["id"], text="to the group")
        event = await web.next_event(DEADLINE)
        assert event["type"] == "group_message" and event["message_id"] == posted["message_id"]


# --- nginx: the page and /ws ------------------------------------------------------------


NGINX_ATTEMPTS = 5


@asynccontextmanager
async def nginx_web(ws_ports: tuple[int, int], directory: Path) -> AsyncIterator[int]:
    """nginx's http server in front of two nodes' WebSocket ports; yields its port.

    nginx cannot listen on port 0 and tell which port it got, so its ports come from
    ``free_port``; if one was taken before nginx could bind it, try other ports."""
    async with AsyncExitStack() as stack:
        for attempt in range(1, NGINX_ATTEMPTS + 1):
            port = free_port()
            conf = render_web_conf(port, ws_ports)
            try:
                await stack.enter_async_context(run_nginx(conf, directory / f"try-{attempt}"))
                break
            except RuntimeError as exc:
                if "address already in use" not in str(exc).lower() or attempt == NGINX_ATTEMPTS:
                    raise
        yield port


async def http_get(port: int, path: str) -> tuple[str, bytes]:
    """A plain HTTP/1.0 GET; returns the head (status line and headers) and the body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        with trio.fail_after(DEADLINE):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


async def test_nginx_serves_the_page_and_proxies_ws_to_both_nodes(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with (
        ws_node(mysql_url, redis_url, "node-a") as a,
        ws_node(mysql_url, redis_url, "node-b") as b,
        nginx_web((a.ws_ports[0], b.ws_ports[0]), tmp_path / "nginx") as port,
    ):
        head, body = await http_get(port, "/")
        assert head.startswith("HTTP/1.1 200"), head
        assert re.search(r"(?im)^content-type: text/html", head), head
        assert re.search(r"(?im)^content-security-policy: ", head), head
        assert b"<title>Chat</title>" in body
        head, body = await http_get(port, "/app.js")
        assert head.startswith("HTTP/1.1 200") and "application/javascript" in head, head
        assert body == (REPO / "web/app.js").read_bytes()

        url = f"ws://127.0.0.1:{port}/ws"
        names = [f"web{i}" for i in range(6)]
        async with ws_client(url) as c:
            ids = {name: await register(c, name) for name in names}
        async with trio.open_nursery() as nursery:
            clients = {}
            ready, finished = trio.Event(), trio.Event()

            async def connected(name: str) -> None:
                async with ws_client(url) as c:
                    await login(c, name)
                    clients[name] = c
                    if len(clients) == len(names):
                        ready.set()
                    await finished.wait()

            for name in names:
                nursery.start_soon(connected, name)
            with trio.fail_after(DEADLINE):
                await ready.wait()
            on_a, on_b = logged_in(a), logged_in(b)
            assert on_a and on_b, (on_a, on_b)  # no stickiness: both nodes got users
            x, y = sorted(on_a)[0], sorted(on_b)[0]
            await clients[x].call("send", to=ids[y], text="through nginx")
            event = await clients[y].next_event(DEADLINE)
            assert event["type"] == "message" and event["text"] == "through nginx"
            finished.set()
