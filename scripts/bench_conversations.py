#!/usr/bin/env python3
"""How long ``conversations`` takes at the store for a user with 2,000 conversations and
a million messages, and (with --events) how long ``typing`` and ``read`` take to reach
the other user's device across two nodes.

Fills a fresh MariaDB database (a new name, dropped at the end unless --keep) with bulk
INSERTs, as the schema after migration 0006 holds it: ann, --direct peers each with a
one-to-one conversation with ann, --groups groups of ann and five peers, and --messages
messages spread at random over those conversations (so every conversation's messages
span the whole id range), with stream positions, each conversation's row and read
markers: most conversations read to the end, some with a few to a few hundred unread,
some never read (999 or more). Then it times ``Store.conversations`` (the coroutine the
handler awaits: a thread hop and the queries) for the first page (limit 50), pages
``before`` a random conversation's last message, the first page with every marker at 0
(each of the 50 conversations counts 999: the worst case), and ``Store.mark_read_direct``.

With --events N, it starts two ``chat-server serve`` processes on that database and the
Redis at --redis (a prefix of their own), logs ann in on one and bob on the other, and
times N ``typing`` and N ``read`` requests from the request's write until the other
node's event reached bob (a receipt, for ``read``).

    .venv/bin/python scripts/bench_conversations.py [--events 500]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat.bench.local import fresh_database
from chat.client import connect
from chat.store import Store, open_store
from chat.store.sql import now_ms

CHUNK = 5000
TEXT = "a message of ordinary length, say forty to sixty characters"
GROUP_MEMBERS = 5
"""Peers in each group besides ann."""


class Fixture:
    """What the fill made: ann's id, each conversation's message ids, ascending."""

    def __init__(self) -> None:
        self.ann = 0
        self.peers: list[int] = []
        self.direct: dict[int, list[int]] = {}
        """Peer -> the ids of the messages between ann and that peer."""
        self.from_peer: dict[int, list[int]] = {}
        self.groups: dict[int, list[int]] = {}
        self.group_others: dict[int, list[int]] = {}
        """Group -> the ids of its messages from members other than ann."""


def fill(store: Store, direct: int, groups: int, messages: int) -> Fixture:
    def work(conn: Any) -> Fixture:
        cursor = conn.cursor()
        sql = store.dialect.sql
        now = now_ms()
        rng = random.Random(23)
        fx = Fixture()
        users = [(n + 1, f"user{n}", f"user{n}", "x", now) for n in range(direct + 1)]
        _many(
            cursor,
            sql,
            "INSERT INTO users (id, name, name_key, password_hash, created_at)",
            users,
        )
        fx.ann, fx.peers = 1, [n + 2 for n in range(direct)]
        members: dict[int, list[int]] = {}
        group_rows = []
        member_rows = []
        for g in range(1, groups + 1):
            group_rows.append((g, f"group{g}", f"group{g}", "", fx.ann, now, GROUP_MEMBERS + 1))
            members[g] = [fx.ann, *rng.sample(fx.peers, GROUP_MEMBERS)]
            for user in members[g]:
                member_rows.append((g, user, "creator" if user == fx.ann else "normal", now))
        _many(
            cursor,
            sql,
            "INSERT INTO chat_groups"
            " (id, name, name_key, description, creator_id, created_at, member_count)",
            group_rows,
        )
        _many(
            cursor,
            sql,
            "INSERT INTO group_members (group_id, user_id, role, joined_at)",
            member_rows,
        )
        fx.direct = {peer: [] for peer in fx.peers}
        fx.from_peer = {peer: [] for peer in fx.peers}
        fx.groups = {g: [] for g in members}
        fx.group_others = {g: [] for g in members}
        inbox: dict[int, int] = {}
        log: dict[int, int] = {}
        # Each group as busy as a one-to-one conversation on average.
        targets = [("d", peer) for peer in fx.peers] + [("g", g) for g in members]
        rows: list[tuple[Any, ...]] = []
        for n in range(messages):
            message_id = n + 1
            kind, key = rng.choice(targets)
            if kind == "d":
                sender, recipient = (fx.ann, key) if rng.random() < 0.5 else (key, fx.ann)
                inbox[recipient] = pos = inbox.get(recipient, 0) + 1
                rows.append((message_id, sender, recipient, None, TEXT, now + n, pos))
                fx.direct[key].append(message_id)
                if sender != fx.ann:
                    fx.from_peer[key].append(message_id)
            else:
                sender = rng.choice(members[key])
                log[key] = pos = log.get(key, 0) + 1
                rows.append((message_id, sender, None, key, TEXT, now + n, pos))
                fx.groups[key].append(message_id)
                if sender != fx.ann:
                    fx.group_others[key].append(message_id)
            if len(rows) == CHUNK:
                _many(
                    cursor,
                    sql,
                    "INSERT INTO messages (id, sender_id, recipient_id, group_id, body, ts, pos)",
                    rows,
                )
                rows = []
        if rows:
            _many(
                cursor,
                sql,
                "INSERT INTO messages (id, sender_id, recipient_id, group_id, body, ts, pos)",
                rows,
            )
        for user, head in inbox.items():
            cursor.execute(sql("UPDATE users SET inbox_head = ? WHERE id = ?"), (head, user))
        for group, head in log.items():
            cursor.execute(sql("UPDATE chat_groups SET log_head = ? WHERE id = ?"), (head, group))
        # Conversation rows and ann's markers: 60 % read to the end, 30 % a few to a few
        # hundred behind, 10 % never read.
        conversation_rows = []
        for peer, ids in fx.direct.items():
            if not ids:
                continue
            conversation_rows.append((fx.ann, peer, ids[-1], marker(rng, fx.from_peer[peer])))
            conversation_rows.append((peer, fx.ann, ids[-1], 0))
        _many(
            cursor,
            sql,
            "INSERT INTO conversations (user_id, peer_id, last_id, read_id)",
            conversation_rows,
        )
        for group, others in fx.group_others.items():
            cursor.execute(
                sql("UPDATE group_members SET read_id = ? WHERE group_id = ? AND user_id = ?"),
                (marker(rng, others), group, fx.ann),
            )
        conn.commit()
        for table in ("messages", "conversations", "group_members"):
            cursor.execute(f"ANALYZE TABLE {table}")
            cursor.fetchall()
        conn.commit()
        return fx

    return store.pool.run_blocking(work)


def marker(rng: random.Random, from_others: list[int]) -> int:
    """A read marker over these messages from others (ascending ids)."""
    if not from_others:
        return 0
    roll = rng.random()
    if roll < 0.6:
        return from_others[-1]
    if roll < 0.9:
        behind = min(len(from_others), rng.randint(1, 300))
        return from_others[-behind] - 1
    return 0


def _many(cursor: Any, sql: Callable[[str], str], head: str, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        marks = "(" + ", ".join("?" for _ in chunk[0]) + ")"
        cursor.execute(
            sql(f"{head} VALUES " + ", ".join(marks for _ in chunk)),
            [value for row in chunk for value in row],
        )


async def measure(
    label: str, runs: int, call: Callable[[random.Random], Awaitable[Any]]
) -> tuple[str, list[float]]:
    rng = random.Random(label)
    for _ in range(10):  # warm the pool and the caches
        await call(rng)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call(rng)
        times.append((time.perf_counter() - started) * 1000)
    return label, times


def report(label: str, times: list[float]) -> str:
    times = sorted(times)

    def pick(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))]

    return (
        f"  {label:<34} p50 {statistics.median(times):7.2f}  p99 {pick(0.99):7.2f}"
        f"  max {times[-1]:7.2f} ms  (n={len(times)})"
    )


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


async def store_figures(store: Store, fx: Fixture, runs: int) -> None:
    ann = fx.ann
    lasts = sorted(ids[-1] for ids in [*fx.direct.values(), *fx.groups.values()] if ids)
    page = await store.conversations(ann, None, 50)
    unread = [item.unread for item in page.items]
    print(
        f"  first page: {len(page.items)} conversations, unread {min(unread)}-{max(unread)},"
        f" {sum(1 for u in unread if u)} with something unread"
    )
    kinds: dict[str, Callable[[random.Random], Awaitable[Any]]] = {
        "conversations, first page (50)": lambda r: store.conversations(ann, None, 50),
        "conversations, first page (100)": lambda r: store.conversations(ann, None, 100),
        "conversations, before random (50)": lambda r: store.conversations(
            ann, r.choice(lasts), 50
        ),
        "read (one marker up, direct)": lambda r: read_one(store, fx, r),
    }
    for label, call in kinds.items():
        before = cpu_seconds()
        name, times = await measure(label, runs, call)
        print(
            report(name, times)
            + f"  bench CPU {1000 * (cpu_seconds() - before) / runs:.2f} ms/call"
        )

    def zero(conn: Any) -> None:
        cursor = conn.cursor()
        cursor.execute("UPDATE conversations SET read_id = 0 WHERE user_id = %s", (ann,))
        cursor.execute("UPDATE group_members SET read_id = 0 WHERE user_id = %s", (ann,))
        conn.commit()

    store.pool.run_blocking(zero)
    page = await store.conversations(ann, None, 50)
    print(f"  every marker at 0: first page unread {min(i.unread for i in page.items)}-999")
    print(
        report(
            *await measure(
                "worst: first page, all 999+ (50)",
                runs,
                lambda r: store.conversations(ann, None, 50),
            )
        )
    )


async def read_one(store: Store, fx: Fixture, rng: random.Random) -> None:
    peer = rng.choice(fx.peers)
    ids = fx.direct[peer]
    if ids:
        await store.mark_read_direct(fx.ann, peer, rng.choice(ids))


# --- events across two nodes ------------------------------------------------------


async def event_figures(database: str, redis: str, count: int, directory: Path) -> None:
    prefix = f"bench-conv-{uuid.uuid4().hex[:8]}"
    ports = [free_port(), free_port()]
    logs = [directory / f"node-{n}.log" for n in range(2)]
    processes = []
    for n, (port, log) in enumerate(zip(ports, logs, strict=True)):
        with log.open("wb") as out:
            processes.append(
                await trio.lowlevel.open_process(
                    [
                        sys.executable,
                        *("-m", "chat", "serve", "--host", "127.0.0.1", "--port", str(port)),
                        *("--database", database, "--redis", redis, "--redis-prefix", prefix),
                        *("--node-id", f"bench-{n}"),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        for port, log in zip(ports, logs, strict=True):
            with trio.fail_after(60):
                # A log file to poll, not an event to wait on.
                while f"port {port}" not in log.read_text(errors="replace"):  # noqa: ASYNC110
                    await trio.sleep(0.1)
        async with connect("127.0.0.1", ports[0]) as ann, connect("127.0.0.1", ports[1]) as bob:
            suffix = uuid.uuid4().hex[:6]
            ann_id = (await ann.call("register", name=f"ann-{suffix}", password="pw"))["user"]["id"]
            bob_id = (await bob.call("register", name=f"bob-{suffix}", password="pw"))["user"]["id"]
            await ann.call("login", id=ann_id, password="pw")
            await bob.call("login", id=bob_id, password="pw")
            await ann.call("add_friend", user_id=bob_id)
            await until(bob, "friend_added")
            typing_times = []
            for n in range(count):
                started = time.perf_counter()
                await ann.call("typing", **{"with": bob_id, "active": n % 2 == 0})
                await until(bob, "typing")
                typing_times.append((time.perf_counter() - started) * 1000)
            read_times = []
            for _ in range(count):
                sent = await bob.call("send", to=ann_id, text="read me")
                await until(ann, "message")
                started = time.perf_counter()
                await ann.call("read", **{"with": bob_id, "message_id": sent["message_id"]})
                await until(bob, "read")
                read_times.append((time.perf_counter() - started) * 1000)
        print(f"events across two nodes (Redis {redis}, prefix {prefix}):")
        print(report("typing: request -> friend's event", typing_times))
        print(report("read: request -> receipt", read_times))
    finally:
        for process in processes:
            process.terminate()
        with trio.move_on_after(10, shield=True):
            for process in processes:
                await process.wait()


async def until(c: Any, kind: str) -> dict[str, Any]:
    while True:
        event = await c.next_event(10)
        if event["type"] == kind:
            return dict(event)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server",
        default=os.environ.get("CHAT_TEST_MYSQL", "mysql://root@127.0.0.1:3306"),
        help="MariaDB server URL without a database (a new database is made on it)",
    )
    parser.add_argument("--direct", type=int, default=1_900, help="one-to-one conversations")
    parser.add_argument("--groups", type=int, default=100, help="groups")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=500, help="calls timed per kind")
    parser.add_argument("--events", type=int, default=0, help="typing/read events to time")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    database = f"{args.server}/bench_conversations_{uuid.uuid4().hex[:8]}"
    store = await trio.to_thread.run_sync(open_store, database)
    try:
        started = time.monotonic()
        fx = await trio.to_thread.run_sync(fill, store, args.direct, args.groups, args.messages)
        print(
            f"filled {database}: {args.direct + args.groups:,} conversations of one user"
            f" ({args.direct:,} one-to-one, {args.groups:,} groups),"
            f" {args.messages:,} messages, in {time.monotonic() - started:.0f} s"
        )
        print(f"at the store ({store.dialect.describe()}):")
        await store_figures(store, fx, args.runs)
        if args.events:
            directory = trio.Path(f"/tmp/bench-conversations-{os.getpid()}")
            await directory.mkdir(exist_ok=True)
            await event_figures(database, args.redis, args.events, Path(directory))
    finally:
        store.close()
        if not args.keep:
            fresh_database(database)


if __name__ == "__main__":
    trio.run(main)
