#!/usr/bin/env python3
"""How long a ``history`` page takes at the store, in a conversation of 100,000 messages.

Fills a fresh database (dropped at the end unless --keep) with one one-to-one
conversation and one group of --messages messages each, plus as many messages of
other conversations in between (so an index, not luck, finds the pages), then times
``Store.history_direct`` and ``Store.history_group`` (the coroutines the handler
awaits: a thread hop, one read transaction, the queries) for pages of --limit at
random places: the newest page, ``before`` a random id, ``after`` a random id.
Prints percentiles per kind and the query plan MariaDB chose.

    .venv/bin/python scripts/bench_history.py --database mysql://root@127.0.0.1:3306/bench_history
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat.bench.local import fresh_database
from chat.store import Store, open_store
from chat.store.sql import now_ms

CHUNK = 5000


def fill(store: Store, messages: int) -> tuple[int, int, int, int]:
    """Users ann (1), bob (2) and 20 others; a group; ann<->bob, the group and noise."""

    def work(conn: Any) -> tuple[int, int, int, int]:
        cursor = conn.cursor()
        sql = store.dialect.sql
        now = now_ms()
        users = [(f"user{n}", "x", now) for n in range(22)]
        cursor.executemany(
            sql("INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)"), users
        )
        cursor.execute(sql("SELECT id FROM users ORDER BY id"))
        ids = [int(row[0]) for row in cursor.fetchall()]
        ann, bob, others = ids[0], ids[1], ids[2:]
        cursor.execute(
            sql(
                "INSERT INTO chat_groups (name, description, creator_id, created_at)"
                " VALUES ('g', '', ?, ?)"
            ),
            (ann, now),
        )
        group = int(cursor.lastrowid)
        cursor.execute(
            sql(
                "INSERT INTO group_members (group_id, user_id, role, joined_at)"
                " VALUES (?, ?, 'creator', ?)"
            ),
            (group, ann, now),
        )
        rng = random.Random(7)
        rows: list[tuple[Any, ...]] = []
        text = "a message of ordinary length, say forty to sixty characters"
        for n in range(messages * 3):
            kind = n % 3
            if kind == 0:
                sender, recipient = (ann, bob) if rng.random() < 0.5 else (bob, ann)
                rows.append((sender, recipient, None, text, now + n))
            elif kind == 1:
                rows.append((rng.choice([ann, bob, *others]), None, group, text, now + n))
            else:
                # noise: ann and bob with others, others among themselves
                a, b = rng.sample([ann, bob, *others], 2)
                rows.append((a, b, None, text, now + n))
            if len(rows) == CHUNK:
                _insert(cursor, sql, rows)
                rows = []
        if rows:
            _insert(cursor, sql, rows)
        conn.commit()
        cursor.execute(sql("SELECT MIN(id), MAX(id) FROM messages"))
        low, high = cursor.fetchone()
        cursor.execute("ANALYZE TABLE messages" if store.dialect.name == "mysql" else "ANALYZE")
        cursor.fetchall()
        conn.commit()
        return ann, bob, int(low), int(high)

    return store.pool.run_blocking(work)


def _insert(cursor: Any, sql: Callable[[str], str], rows: list[tuple[Any, ...]]) -> None:
    cursor.execute(
        sql(
            "INSERT INTO messages (sender_id, recipient_id, group_id, body, ts) VALUES "
            + ", ".join("(?, ?, ?, ?, ?)" for _ in rows)
        ),
        [value for row in rows for value in row],
    )


def plans(store: Store, ann: int, bob: int, middle: int) -> list[str]:
    def work(conn: Any) -> list[str]:
        cursor = conn.cursor()
        out = []
        for label, query, args in (
            (
                "direct, one direction, before",
                "SELECT id FROM messages WHERE sender_id = ? AND recipient_id = ? AND id < ?"
                " ORDER BY id DESC LIMIT 51",
                (ann, bob, middle),
            ),
            (
                "group, before",
                "SELECT id FROM messages WHERE group_id = ? AND id < ? ORDER BY id DESC LIMIT 51",
                (1, middle),
            ),
        ):
            explain = "EXPLAIN " if store.dialect.name == "mysql" else "EXPLAIN QUERY PLAN "
            cursor.execute(store.dialect.sql(explain + query), args)
            out.append(f"{label}: {[tuple(row) for row in cursor.fetchall()]}")
        conn.rollback()
        return out

    return store.pool.run_blocking(work)


async def measure(
    label: str, runs: int, call: Callable[[random.Random], Awaitable[Any]]
) -> tuple[str, list[float]]:
    rng = random.Random(label)
    for _ in range(10):  # warm the pool and the caches
        await call(rng)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        page = await call(rng)
        times.append((time.perf_counter() - started) * 1000)
        assert page.messages, "a page of the benchmark came back empty"
    return label, times


def report(label: str, times: list[float]) -> str:
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return (
        f"  {label:<22} p50 {statistics.median(times):6.2f}  p95 {pick(0.95):6.2f}"
        f"  p99 {pick(0.99):6.2f}  max {times[-1]:6.2f} ms  (n={len(times)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True, help="a database URL; it must not exist")
    parser.add_argument("--messages", type=int, default=100_000, help="per conversation")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--runs", type=int, default=500, help="pages timed per kind")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    store = await trio.to_thread.run_sync(open_store, args.database)
    try:

        def exists(conn: Any) -> int:
            cursor = conn.cursor()
            cursor.execute("SELECT COUNT(*) FROM messages")
            return int(cursor.fetchone()[0])

        if store.pool.run_blocking(exists):
            sys.exit(f"{args.database} holds messages already: give a fresh database")
        started = time.monotonic()
        ann, bob, low, high = await trio.to_thread.run_sync(fill, store, args.messages)
        print(
            f"filled {args.messages:,} messages each for ann<->bob and a group, plus"
            f" {args.messages:,} of other conversations, in {time.monotonic() - started:.0f} s"
        )
        for line in plans(store, ann, bob, (low + high) // 2):
            print("  plan", line)
        limit = args.limit
        kinds = {
            "direct, newest": lambda r: store.history_direct(
                ann, bob, before=None, after=None, limit=limit
            ),
            "direct, before random": lambda r: store.history_direct(
                ann, bob, before=r.randint(low + 1000, high), after=None, limit=limit
            ),
            "direct, after random": lambda r: store.history_direct(
                ann, bob, before=None, after=r.randint(low, high - 1000), limit=limit
            ),
            "group, newest": lambda r: store.history_group(
                ann, 1, before=None, after=None, limit=limit
            ),
            "group, before random": lambda r: store.history_group(
                ann, 1, before=r.randint(low + 1000, high), after=None, limit=limit
            ),
            "group, after random": lambda r: store.history_group(
                ann, 1, before=None, after=r.randint(low, high - 1000), limit=limit
            ),
        }
        print(f"pages of {limit} at the store ({store.dialect.describe()}):")
        for label, call in kinds.items():
            print(report(*await measure(label, args.runs, call)))
    finally:
        store.close()
        if not args.keep:
            fresh_database(args.database)


if __name__ == "__main__":
    trio.run(main)
