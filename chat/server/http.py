"""The node's small HTTP endpoint (``--http-port``): ``/metrics``, ``/healthz``, ``/readyz``.

HTTP/1.1 parsed by h11 (the library trio-websocket already builds on), one
request per connection (``Connection: close``), which is all Prometheus, nginx
and orchestrators need. Every connection is bounded by ``REQUEST_TIMEOUT`` and
a request head by ``MAX_HEAD_BYTES``, so a port scan or a slow client costs
nothing. The answers are made on the trio thread, so ``/healthz`` answering at
all is the proof that the node's loop runs.

- ``GET /metrics``: the Prometheus text exposition (``Metrics.render``);
- ``GET /healthz``: 200 ``{"status": "ok"}`` while the process runs its loop;
- ``GET /readyz``: 200 ``{"ready": true}`` when the node can serve, else 503
  ``{"ready": false, "problems": {"database": "...", ...}}`` (``Health``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
"""Seconds from accept to the answer written."""
MAX_HEAD_BYTES = 16 * 1024
READ_CHUNK = 4096

Answer = tuple[int, str, bytes]
"""Status, content type, body."""


class HttpEndpoint:
    def __init__(
        self, metrics: Callable[[], bytes], problems: Callable[[], dict[str, str]]
    ) -> None:
        self._metrics = metrics
        self._problems = problems

    def answer(self, method: str, target: str) -> Answer:
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "only GET"})
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self._metrics()
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            problems = self._problems()
            if problems:
                return _json(503, {"ready": False, "problems": problems})
            return _json(200, {"ready": True})
        return _json(404, {"error": f"no such path: {path[:100]}"})

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await trio.serve_listeners(self._serve_one, listeners, task_status=task_status)
        finally:
            for listener in listeners:
                await listener.aclose()

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await self._exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client left
        except Exception:
            log.exception("HTTP request failed")
        finally:
            await stream.aclose()

    async def _exchange(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                await _send(stream, conn, _json(400, {"error": "bad request"}), head=False)
                return
            if event is h11.NEED_DATA:
                data = await stream.receive_some(READ_CHUNK)
                conn.receive_data(data)  # b"": the peer closed
                continue
            if isinstance(event, h11.Request):
                answer = self.answer(event.method.decode("latin-1"), event.target.decode("latin-1"))
                await _send(stream, conn, answer, head=event.method == b"HEAD")
                return
            return  # the peer closed before a whole request


async def _send(
    stream: trio.SocketStream, conn: h11.Connection, answer: Answer, head: bool
) -> None:
    status, content_type, body = answer
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
        ("connection", "close"),
    ]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers))
    except h11.LocalProtocolError:
        return  # the request was too broken to answer in HTTP
    assert data is not None
    if not head:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


def _json(status: int, body: object) -> Answer:
    return status, "application/json", json.dumps(body).encode() + b"\n"
