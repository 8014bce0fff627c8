"""``--db-timeout`` holds for every store call, coalesced or not, however many batches
are stuck ahead of it: a node on a MariaDB of the test's own, frozen with SIGSTOP
while sends (pipelined, from two senders) and logins are under way.

The deadline is 2 s; each reply must come within it plus a margin for a loaded
machine (1.5 s): before, a send queued behind a stuck batch waited for that batch's
deadline and then its own (4 s and more).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from chat.client import ChatClient

from .private_mariadb import PrivateMariaDB, available
from .support import client, running_node

DB_TIMEOUT = 2.0
MARGIN = 1.5
"""What a reply may take beyond the deadline on a busy machine (scheduling, not waiting)."""

pytestmark = pytest.mark.skipif(not available(), reason="mariadbd is not installed")


@pytest.fixture(scope="module")
def private_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB]:
    server = PrivateMariaDB(tmp_path_factory.mktemp("mariadb"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _cheap_hash(password: str) -> str:
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(password.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
    return f"scrypt$2$1$1${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


async def _timed(c: ChatClient, kind: str, **fields: Any) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    reply = await c.request(kind, **fields)
    return time.monotonic() - started, reply


async def test_a_frozen_database_answers_sends_and_logins_within_the_deadline(
    private_mariadb: PrivateMariaDB,
) -> None:
    """Frozen: six users each send one message, 0.3 s apart (each send's batch is stuck
    behind the ones before); one user pipelines bursts of sends (three in one write, a
    burst every 0.5 s while the last is unanswered: read at once, several in a batch);
    logins come and go. Every answer is ``unavailable`` within the deadline of its
    request."""
    url = private_mariadb.url("chat_deadlines")
    answers: list[tuple[str, float, dict[str, Any]]] = []
    names = [f"u{n}" for n in range(6)]
    async with running_node(url, db_timeout_seconds=DB_TIMEOUT) as node:
        store = node.services.store
        ids = {}
        for name in ("ann", "bob", "cat", *names):
            ids[name] = (await store.create_user(name, _cheap_hash("pw"))).id
        async with AsyncExitStack() as stack:
            clients = {}
            for name in ("ann", *names):
                clients[name] = await stack.enter_async_context(client(node))
                await clients[name].call("login", name=name, password="pw")
            await clients["ann"].call("send", to=ids["bob"], text="before")

            async def send_one(name: str, text: str, cid: str) -> None:
                elapsed, reply = await _timed(
                    clients[name], "send", to=ids["bob"], text=text, cid=cid
                )
                answers.append((f"send {name} {text}", elapsed, reply))

            async def one_each(nursery: trio.Nursery) -> None:
                for name in names:
                    nursery.start_soon(send_one, name, "one", "one")
                    await trio.sleep(0.3)

            async def burst(number: int) -> None:
                # Three sends in one write: the node reads them together, as pipelined
                # (a frame read alone is answered before the next one is read: then its
                # deadline starts when it is read, see docs/operations.md).
                frames = b"".join(
                    json.dumps(
                        {
                            "type": "send",
                            "to": ids["bob"],
                            "text": f"{number}.{n}",
                            "cid": f"{number}.{n}",
                        }
                    ).encode()
                    + b"\n"
                    for n in range(3)
                )
                started = time.monotonic()
                replies = await clients["ann"].send_raw(frames, replies=3)
                elapsed = time.monotonic() - started
                answers.extend(
                    (f"send ann {number}.{n}", elapsed, r) for n, r in enumerate(replies)
                )

            async def bursts(nursery: trio.Nursery) -> None:
                for number in range(3):  # each burst sent while the last is unanswered
                    nursery.start_soon(burst, number)
                    await trio.sleep(0.5)

            async def logins() -> None:
                for n in range(3):
                    async with client(node) as c:
                        elapsed, reply = await _timed(c, "login", name="cat", password="pw")
                        answers.append((f"login {n}", elapsed, reply))
                    await trio.sleep(0.5)

            private_mariadb.freeze()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(one_each, nursery)
                    nursery.start_soon(bursts, nursery)
                    nursery.start_soon(logins)
            finally:
                private_mariadb.thaw()
            assert len(answers) == 6 + 9 + 3
            late = [
                (what, round(elapsed, 2))
                for what, elapsed, _ in answers
                if elapsed > DB_TIMEOUT + MARGIN
            ]
            assert late == [], late
            codes = {reply.get("code", reply["type"]) for _, _, reply in answers}
            assert codes == {"unavailable"}, answers
            # The database is back: so is the node (a repeated cid answers as the first).
            with trio.fail_after(30):
                while True:
                    again = await clients["u0"].request(
                        "send", to=ids["bob"], text="one", cid="one"
                    )
                    if again["type"] == "ok":
                        break
                    await trio.sleep(0.5)
