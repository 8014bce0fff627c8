"""Test plumbing for operations: HTTP against a node's endpoint, parsed metrics, and a
TCP forwarder that can freeze, standing in for a database that stops answering (the
shared MariaDB itself is never stopped)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from chat.server import Node


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """One GET over a fresh connection: the status and the body."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def ready(node: Node) -> tuple[int, dict[str, Any]]:
    status, body = await http_get(node.http_ports[0], "/readyz")
    value: dict[str, Any] = json.loads(body)
    return status, value


async def metrics(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    status, body = await http_get(node.http_ports[0], "/metrics")
    assert status == 200, body
    return parse(body)


def parse(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Freezer:
    """Forwards TCP connections to ``target``; while ``frozen``, forwards nothing (in
    either direction), as a stopped server would behave."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._thawed = trio.Event()
        self._thawed.set()

    def freeze(self) -> None:
        self._thawed = trio.Event()

    def thaw(self) -> None:
        self._thawed.set()

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._forward, listeners, task_status=task_status)

    async def _forward(self, client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await self._thawed.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


@asynccontextmanager
async def freezer(host: str, port: int) -> AsyncIterator[Freezer]:
    forwarder = Freezer(host, port)
    async with trio.open_nursery() as nursery:
        await nursery.start(forwarder.run)
        try:
            yield forwarder
        finally:
            forwarder.thaw()
            nursery.cancel_scope.cancel()
