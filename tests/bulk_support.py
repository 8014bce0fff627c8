"""Fixtures written straight into the database: thousands of users, friendships and
group members in a fraction of a second, where registering them over the wire
(a password hash each) would take minutes. Everything else in these tests still
goes over real connections to a real node."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from chat.server.passwords import hash_password
from chat.store import dialect_for, look_key, name_key
from chat.store.sql import Sql, now_ms

PASSWORD = "secret"
_HASH = hash_password(PASSWORD)
"""One hash for every bulk user: they all log in with ``PASSWORD``."""


def _run(url: str, work: object) -> list[int]:
    dialect = dialect_for(url)
    conn = dialect.connect()
    try:
        dialect.begin(conn, write=True)
        cursor = conn.cursor()
        result = work(Sql(cursor, dialect))  # type: ignore[operator]
        conn.commit()
        cursor.close()
        return list(result)
    finally:
        conn.close()


async def bulk_users(url: str, names: Sequence[str]) -> list[int]:
    """Users with these names (password ``PASSWORD``), ids in the order of ``names``."""

    def work(sql: Sql) -> list[int]:
        created = now_ms()
        sql.many(
            "INSERT INTO users (name, name_key, look_key, password_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(name, name_key(name), look_key(name), _HASH, created) for name in names],
        )
        rows = sql.all("SELECT id, name FROM users")
        by_name = {(r[1].decode() if isinstance(r[1], bytes) else r[1]): int(r[0]) for r in rows}
        return [by_name[name] for name in names]

    return await trio.to_thread.run_sync(_run, url, work)


async def bulk_friends(url: str, user_id: int, friend_ids: Sequence[int]) -> None:
    """Make ``user_id`` a friend of each of ``friend_ids`` (both directions)."""

    def work(sql: Sql) -> list[int]:
        created = now_ms()
        rows = [(user_id, f, created) for f in friend_ids] + [
            (f, user_id, created) for f in friend_ids
        ]
        sql.many("INSERT INTO friends (user_id, friend_id, created_at) VALUES (?, ?, ?)", rows)
        return []

    await trio.to_thread.run_sync(_run, url, work)


async def bulk_members(url: str, group_id: int, user_ids: Sequence[int]) -> None:
    """Add users to a group (as ``normal`` members), keeping its member count right."""

    def work(sql: Sql) -> list[int]:
        joined = now_ms()
        sql.many(
            "INSERT INTO group_members (group_id, user_id, role, joined_at)"
            " VALUES (?, ?, 'normal', ?)",
            [(group_id, u, joined) for u in user_ids],
        )
        sql.execute(
            "UPDATE chat_groups SET member_count = member_count + ? WHERE id = ?",
            (len(user_ids), group_id),
        )
        return []

    await trio.to_thread.run_sync(_run, url, work)


async def bulk_group(url: str, name: str, creator_id: int, description: str = "") -> int:
    """A group created by ``creator_id`` (its first member)."""
    return (await bulk_groups(url, [name], creator_id, description))[0]


async def bulk_groups(
    url: str, names: Sequence[str], creator_id: int, description: str = ""
) -> list[int]:
    """Groups created by ``creator_id`` (their first member), ids in the order of ``names``."""

    def work(sql: Sql) -> list[int]:
        created = now_ms()
        ids = []
        for name in names:
            group_id = sql.insert(
                "INSERT INTO chat_groups (name, name_key, description, creator_id, created_at,"
                " member_count) VALUES (?, ?, ?, ?, ?, 1)",
                (name, name_key(name), description, creator_id, created),
            )
            sql.execute(
                "INSERT INTO group_members (group_id, user_id, role, joined_at)"
                " VALUES (?, ?, 'creator', ?)",
                (group_id, creator_id, created),
            )
            ids.append(group_id)
        return ids

    return await trio.to_thread.run_sync(_run, url, work)
