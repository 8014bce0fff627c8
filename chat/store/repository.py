"""Every query the chat server makes, written once for both databases.

One public coroutine per use case; each runs one transaction on a pooled
connection in a worker thread (see ``chat.store.pool``). The caller never
holds a transaction across an ``await``: a request's whole read-check-write
happens inside one function here, which is what makes checks such as "is the
``cid`` used already?" and "is the sender a member?" race-free.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from .coalesce import Coalescer
from .dialect import Connection, Cursor, Dialect
from .errors import (
    AlreadyFriends,
    AlreadyMember,
    CannotFriendSelf,
    GroupNameTaken,
    NameTaken,
    NoSuchGroup,
    NoSuchUser,
    NotAMember,
)
from .pool import ConnectionPool
from .records import (
    Credentials,
    GroupRecord,
    LoginSnapshot,
    MemberRecord,
    MembershipRecord,
    PendingDelivery,
    Role,
    StoredMessage,
    UserRecord,
    text,
)

T = TypeVar("T")

MAX_ROW_ID = 2**63 - 1
"""Ids are BIGINT: a larger id names no row (and would not fit a query parameter)."""


def _no_row(row_id: int) -> bool:
    return not 0 < row_id <= MAX_ROW_ID


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Store:
    """The repository: users, friends, groups, messages and what is kept for delivery."""

    def __init__(self, dialect: Dialect, pool_size: int | None = None) -> None:
        self.dialect = dialect
        self.pool = ConnectionPool(dialect, pool_size or dialect.pool_size)
        self._pending_calls = Coalescer(self._pending_batch)
        self._acknowledge_calls = Coalescer(self._acknowledge_batch)

    def close(self) -> None:
        self.pool.close()

    # --- plumbing -------------------------------------------------------------

    @contextmanager
    def _transaction(self, conn: Connection, *, write: bool) -> Iterator[_Sql]:
        self.dialect.begin(conn, write=write)
        cursor = conn.cursor()
        try:
            yield _Sql(cursor, self.dialect)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cursor.close()

    async def _run(self, body: Callable[[_Sql], T], *, write: bool) -> T:
        def work(conn: Connection) -> T:
            with self._transaction(conn, write=write) as sql:
                return body(sql)

        return await self.pool.run(work)

    # --- accounts -------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str) -> UserRecord:
        def body(sql: _Sql) -> UserRecord:
            if sql.one("SELECT 1 FROM users WHERE name = ?", (name,)):
                raise NameTaken(name)
            try:
                user_id = sql.insert(
                    "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)",
                    (name, password_hash, now_ms()),
                )
            except Exception as exc:
                if self.dialect.is_integrity_error(exc):
                    raise NameTaken(name) from exc
                raise
            return UserRecord(id=user_id, name=name)

        return await self._run(body, write=True)

    async def credentials_by_name(self, name: str) -> Credentials | None:
        row = await self._run(
            partial(
                _fetch_one, "SELECT id, name, password_hash FROM users WHERE name = ?", (name,)
            ),
            write=False,
        )
        return None if row is None else Credentials.from_row(row)

    async def credentials_by_id(self, user_id: int) -> Credentials | None:
        if _no_row(user_id):
            return None
        row = await self._run(
            partial(
                _fetch_one, "SELECT id, name, password_hash FROM users WHERE id = ?", (user_id,)
            ),
            write=False,
        )
        return None if row is None else Credentials.from_row(row)

    async def user_by_name(self, name: str) -> UserRecord | None:
        row = await self._run(
            partial(_fetch_one, "SELECT id, name FROM users WHERE name = ?", (name,)), write=False
        )
        return None if row is None else UserRecord.from_row(row)

    async def login_snapshot(self, user_id: int) -> LoginSnapshot:
        """Friends, groups with their members, and how many messages are kept."""

        def body(sql: _Sql) -> LoginSnapshot:
            friends = [
                UserRecord.from_row(row)
                for row in sql.all(
                    "SELECT u.id, u.name FROM friends f JOIN users u ON u.id = f.friend_id"
                    " WHERE f.user_id = ? ORDER BY u.id",
                    (user_id,),
                )
            ]
            groups = _memberships(sql, user_id)
            row = sql.one("SELECT COUNT(*) FROM deliveries WHERE user_id = ?", (user_id,))
            return LoginSnapshot(friends=friends, groups=groups, pending=int(row[0]) if row else 0)

        return await self._run(body, write=False)

    # --- friends --------------------------------------------------------------

    async def add_friend(self, user_id: int, friend_id: int) -> UserRecord:
        """Make two users friends (both directions); returns the friend."""

        def body(sql: _Sql) -> UserRecord:
            if user_id == friend_id:
                raise CannotFriendSelf()
            row = (
                None
                if _no_row(friend_id)
                else sql.one("SELECT id, name FROM users WHERE id = ?", (friend_id,))
            )
            if row is None:
                raise NoSuchUser(friend_id)
            if sql.one(
                "SELECT 1 FROM friends WHERE user_id = ? AND friend_id = ?", (user_id, friend_id)
            ):
                raise AlreadyFriends()
            created = now_ms()
            try:
                sql.many(
                    "INSERT INTO friends (user_id, friend_id, created_at) VALUES (?, ?, ?)",
                    [(user_id, friend_id, created), (friend_id, user_id, created)],
                )
            except Exception as exc:
                if self.dialect.is_integrity_error(exc):
                    raise AlreadyFriends() from exc
                raise
            return UserRecord.from_row(row)

        return await self._run(body, write=True)

    # --- groups ---------------------------------------------------------------

    async def create_group(self, name: str, description: str, creator_id: int) -> GroupRecord:
        def body(sql: _Sql) -> GroupRecord:
            if sql.one("SELECT 1 FROM chat_groups WHERE name = ?", (name,)):
                raise GroupNameTaken(name)
            created = now_ms()
            try:
                group_id = sql.insert(
                    "INSERT INTO chat_groups (name, description, creator_id, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (name, description, creator_id, created),
                )
            except Exception as exc:
                if self.dialect.is_integrity_error(exc):
                    raise GroupNameTaken(name) from exc
                raise
            sql.execute(
                "INSERT INTO group_members (group_id, user_id, role, joined_at)"
                " VALUES (?, ?, 'creator', ?)",
                (group_id, creator_id, created),
            )
            return GroupRecord(id=group_id, name=name, description=description)

        return await self._run(body, write=True)

    async def join_group(self, group_id: int, user_id: int) -> tuple[GroupRecord, Role]:
        def body(sql: _Sql) -> tuple[GroupRecord, Role]:
            row = (
                None
                if _no_row(group_id)
                else sql.one(
                    "SELECT id, name, description FROM chat_groups WHERE id = ?", (group_id,)
                )
            )
            if row is None:
                raise NoSuchGroup(group_id)
            if sql.one(
                "SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?",
                (group_id, user_id),
            ):
                raise AlreadyMember()
            try:
                sql.execute(
                    "INSERT INTO group_members (group_id, user_id, role, joined_at)"
                    " VALUES (?, ?, 'normal', ?)",
                    (group_id, user_id, now_ms()),
                )
            except Exception as exc:
                if self.dialect.is_integrity_error(exc):
                    raise AlreadyMember() from exc
                raise
            return GroupRecord.from_row(row), "normal"

        return await self._run(body, write=True)

    # --- messages -------------------------------------------------------------

    async def store_direct(
        self, sender_id: int, recipient_id: int, body_text: str, cid: str | None
    ) -> StoredMessage:
        """Store a one-to-one message and keep it for its recipient, in one transaction."""

        def body(sql: _Sql) -> StoredMessage:
            earlier = _earlier_send(sql, sender_id, cid)
            if earlier is not None:
                return earlier
            if _no_row(recipient_id) or not sql.one(
                "SELECT 1 FROM users WHERE id = ?", (recipient_id,)
            ):
                raise NoSuchUser(recipient_id)
            ts = now_ms()
            message_id = sql.insert(
                "INSERT INTO messages (sender_id, recipient_id, group_id, body, ts, cid)"
                " VALUES (?, ?, NULL, ?, ?, ?)",
                (sender_id, recipient_id, body_text, ts, cid),
            )
            sql.execute(
                "INSERT INTO deliveries (user_id, message_id) VALUES (?, ?)",
                (recipient_id, message_id),
            )
            return StoredMessage(message_id, ts, [recipient_id], created=True)

        return await self._store_message(body, sender_id, cid)

    async def store_group(
        self, sender_id: int, group_id: int, body_text: str, cid: str | None
    ) -> StoredMessage:
        """Store a group message and keep it for every other member, in one transaction."""

        def body(sql: _Sql) -> StoredMessage:
            earlier = _earlier_send(sql, sender_id, cid)
            if earlier is not None:
                return earlier
            if _no_row(group_id) or not sql.one(
                "SELECT 1 FROM chat_groups WHERE id = ?", (group_id,)
            ):
                raise NoSuchGroup(group_id)
            if not sql.one(
                "SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?",
                (group_id, sender_id),
            ):
                raise NotAMember()
            ts = now_ms()
            message_id = sql.insert(
                "INSERT INTO messages (sender_id, recipient_id, group_id, body, ts, cid)"
                " VALUES (?, NULL, ?, ?, ?, ?)",
                (sender_id, group_id, body_text, ts, cid),
            )
            recipients = [
                int(row[0])
                for row in sql.all(
                    "SELECT user_id FROM group_members WHERE group_id = ? AND user_id <> ?"
                    " ORDER BY user_id",
                    (group_id, sender_id),
                )
            ]
            if recipients:
                sql.many(
                    "INSERT INTO deliveries (user_id, message_id) VALUES (?, ?)",
                    [(user, message_id) for user in recipients],
                )
            return StoredMessage(message_id, ts, recipients, created=True)

        return await self._store_message(body, sender_id, cid)

    async def _store_message(
        self, body: Callable[[_Sql], StoredMessage], sender_id: int, cid: str | None
    ) -> StoredMessage:
        try:
            return await self._run(body, write=True)
        except Exception as exc:
            # Two sends with one cid raced; the loser answers with the winner's message.
            if cid is None or not self.dialect.is_integrity_error(exc):
                raise
            earlier = await self._run(
                partial(_earlier_send, sender_id=sender_id, cid=cid), write=False
            )
            if earlier is None:
                raise
            return earlier

    async def pending(self, user_id: int, limit: int, after_seq: int = 0) -> list[PendingDelivery]:
        """The oldest messages kept for a user, oldest first.

        Concurrent calls share one read transaction (``chat.store.coalesce``): a group
        message wakes hundreds of sessions at once, and they read in one query."""
        return await self._pending_calls((user_id, limit, after_seq))

    async def _pending_batch(
        self, requests: Sequence[tuple[int, int, int]]
    ) -> list[list[PendingDelivery]]:
        by_page: dict[tuple[int, int], set[int]] = defaultdict(set)
        for user_id, limit, after_seq in requests:
            by_page[(limit, after_seq)].add(user_id)

        def body(sql: _Sql) -> list[list[PendingDelivery]]:
            found: dict[tuple[int, int, int], list[PendingDelivery]] = {}
            for (limit, after_seq), users in by_page.items():
                rows_by_user: dict[int, list[PendingDelivery]] = {user: [] for user in users}
                for row in _pending_rows(sql, sorted(users), limit, after_seq):
                    rows_by_user[int(row[8])].append(PendingDelivery.from_row(row))
                for user, rows in rows_by_user.items():
                    found[(user, limit, after_seq)] = rows
            return [found[request] for request in requests]

        return await self._run(body, write=False)

    async def acknowledge(self, user_id: int, seqs: Sequence[int]) -> None:
        """Forget deliveries that were written to the user's connection.

        Concurrent calls (the writers of many sessions) share one transaction, so one
        commit, instead of one each; each call returns once that commit is done."""
        if not seqs:
            return
        await self._acknowledge_calls((user_id, tuple(seqs)))

    async def _acknowledge_batch(
        self, requests: Sequence[tuple[int, tuple[int, ...]]]
    ) -> list[None]:
        by_user: dict[int, set[int]] = defaultdict(set)
        for user_id, seqs in requests:
            by_user[user_id].update(seqs)

        def body(sql: _Sql) -> None:
            for user_id, seqs in sorted(by_user.items()):
                ordered = sorted(seqs)
                marks = ", ".join("?" for _ in ordered)
                sql.execute(
                    f"DELETE FROM deliveries WHERE user_id = ? AND seq IN ({marks})",
                    (user_id, *ordered),
                )

        await self._run(body, write=True)
        return [None] * len(requests)


_PENDING_COLUMNS = (
    "d.seq, m.id, m.sender_id, u.name, m.recipient_id, m.group_id, m.body, m.ts, d.user_id"
)
_PENDING_FROM = (
    " FROM deliveries d JOIN messages m ON m.id = d.message_id JOIN users u ON u.id = m.sender_id"
)


def _pending_rows(sql: _Sql, users: Sequence[int], limit: int, after_seq: int) -> list[Any]:
    """The first ``limit`` kept rows after ``after_seq`` of each user (user id last)."""
    if len(users) == 1:
        # One user (a login's backlog, paged): a plain LIMIT reads only the page.
        return sql.all(
            f"SELECT {_PENDING_COLUMNS}{_PENDING_FROM}"
            " WHERE d.user_id = ? AND d.seq > ? ORDER BY d.seq LIMIT ?",
            (users[0], after_seq, limit),
        )
    marks = ", ".join("?" for _ in users)
    return sql.all(
        "SELECT seq, id, sender_id, name, recipient_id, group_id, body, ts, user_id FROM ("
        f" SELECT {_PENDING_COLUMNS},"
        " ROW_NUMBER() OVER (PARTITION BY d.user_id ORDER BY d.seq) AS n"
        f"{_PENDING_FROM} WHERE d.user_id IN ({marks}) AND d.seq > ?"
        ") page WHERE n <= ? ORDER BY user_id, seq",
        (*users, after_seq, limit),
    )


class _Sql:
    """A cursor that speaks the repository's ``?`` placeholders on every dialect."""

    def __init__(self, cursor: Cursor, dialect: Dialect) -> None:
        self._cursor = cursor
        self._dialect = dialect

    def execute(self, query: str, args: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._dialect.sql(query), tuple(args))

    def many(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(self._dialect.sql(query), [tuple(row) for row in rows])

    def insert(self, query: str, args: Sequence[Any]) -> int:
        self.execute(query, args)
        return int(self._cursor.lastrowid)

    def one(self, query: str, args: Sequence[Any] = ()) -> Any:
        self.execute(query, args)
        return self._cursor.fetchone()

    def all(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        self.execute(query, args)
        return list(self._cursor.fetchall())


def _fetch_one(query: str, args: Sequence[Any], sql: _Sql) -> Any:
    return sql.one(query, args)


def _earlier_send(sql: _Sql, sender_id: int, cid: str | None) -> StoredMessage | None:
    if cid is None:
        return None
    row = sql.one("SELECT id, ts FROM messages WHERE sender_id = ? AND cid = ?", (sender_id, cid))
    if row is None:
        return None
    # Recipients still waiting for it: the first attempt may have been stored without
    # waking them (its reply, or its wake-up, was lost), so the retry wakes them again.
    waiting = sql.all(
        "SELECT user_id FROM deliveries WHERE message_id = ? ORDER BY user_id", (int(row[0]),)
    )
    return StoredMessage(int(row[0]), int(row[1]), [int(r[0]) for r in waiting], created=False)


def _memberships(sql: _Sql, user_id: int) -> list[MembershipRecord]:
    groups = sql.all(
        "SELECT g.id, g.name, g.description, gm.role FROM group_members gm"
        " JOIN chat_groups g ON g.id = gm.group_id WHERE gm.user_id = ? ORDER BY g.id",
        (user_id,),
    )
    if not groups:
        return []
    members: dict[int, list[MemberRecord]] = {int(row[0]): [] for row in groups}
    for group_id, member_id, name, role in sql.all(
        "SELECT gm.group_id, u.id, u.name, gm.role FROM group_members gm"
        " JOIN users u ON u.id = gm.user_id"
        " WHERE gm.group_id IN (SELECT group_id FROM group_members WHERE user_id = ?)"
        " ORDER BY gm.group_id, gm.joined_at, u.id",
        (user_id,),
    ):
        members[int(group_id)].append(MemberRecord(int(member_id), text(name), _role(role)))
    return [
        MembershipRecord(
            group=GroupRecord.from_row(row), role=_role(row[3]), members=members[int(row[0])]
        )
        for row in groups
    ]


def _role(value: Any) -> Role:
    role = text(value)
    return "creator" if role == "creator" else "normal"
