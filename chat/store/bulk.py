"""Many accounts at once: users with their password hashes, friendships, groups with
their members (``chat-server import-users``, through ``chat.server.importing``).

Names arrive checked (the protocol's rules for a new name) and hashes made; this
module only reads what is in the way and writes, as the repository's single
requests would have: each name with its case-folded ``name_key`` and ``look_key``, each friendship
as its two rows, each group with its creator (role ``creator``) and
``member_count``. It runs inside one transaction the caller owns
(``Store.import_accounts``), with rows sent in statements of ``BATCH_ROWS``.

References (friends, group creators and members) are user names: a user of the
same import, or one already in the database (matched exactly, as ``login`` and
``find_user`` match).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import attrs

from .errors import StoreError
from .names import look_key, name_key
from .records import text
from .sql import Sql, now_ms

BATCH_ROWS = 1_000
"""Rows per INSERT statement (and names per ``IN`` list)."""

T = TypeVar("T")


@attrs.frozen
class NewUser:
    name: str
    password_hash: str


@attrs.frozen
class NewGroup:
    name: str
    description: str
    creator: str
    members: tuple[str, ...] = ()
    """Members besides the creator (user names; the creator again is ignored)."""


@attrs.frozen
class Accounts:
    """What one import writes. ``friendships``: pairs of user names, each pair once."""

    users: tuple[NewUser, ...] = ()
    friendships: tuple[tuple[str, str], ...] = ()
    groups: tuple[NewGroup, ...] = ()

    def referenced(self) -> set[str]:
        """Every user name the friendships and groups refer to."""
        names = {name for pair in self.friendships for name in pair}
        for group in self.groups:
            names.add(group.creator)
            names.update(group.members)
        return names


@attrs.frozen
class Imported:
    users: int
    friendships: int
    groups: int
    memberships: int
    """Group members written, creators included."""


@attrs.frozen
class InUse:
    """What stands in the way of an import: names taken (also by a name that differs
    only in case), and referenced users that exist nowhere."""

    user_names: frozenset[str] = frozenset()
    group_names: frozenset[str] = frozenset()
    unknown_users: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.user_names or self.group_names or self.unknown_users)


class ImportBlocked(StoreError):
    """Found in the import's own transaction (something changed since it was checked):
    nothing was written."""

    def __init__(self, in_use: InUse) -> None:
        super().__init__(
            f"{len(in_use.user_names)} user names and {len(in_use.group_names)} group names"
            f" taken, {len(in_use.unknown_users)} users unknown"
        )
        self.in_use = in_use


def in_use(sql: Sql, accounts: Accounts) -> InUse:
    """What the database holds that keeps ``accounts`` from being imported."""
    new_users = {user.name for user in accounts.users}
    return InUse(
        user_names=frozenset(_taken(sql, "users", new_users)),
        group_names=frozenset(_taken(sql, "chat_groups", [g.name for g in accounts.groups])),
        unknown_users=frozenset(
            (accounts.referenced() - new_users)
            - set(existing_users(sql, accounts.referenced() - new_users))
        ),
    )


def existing_users(sql: Sql, names: Iterable[str]) -> dict[str, int]:
    """Ids of the users called exactly one of ``names``."""
    found: dict[str, int] = {}
    for chunk in _chunks(sorted(set(names)), BATCH_ROWS):
        marks = ", ".join("?" for _ in chunk)
        for row in sql.all(f"SELECT id, name FROM users WHERE name IN ({marks})", chunk):
            found[text(row[1])] = int(row[0])
    return found


def write(sql: Sql, accounts: Accounts) -> Imported:
    """Write ``accounts`` (in the caller's transaction); ``ImportBlocked`` before writing
    anything if a name is taken or a referenced user does not exist."""
    blocked = in_use(sql, accounts)
    if blocked:
        raise ImportBlocked(blocked)
    created = now_ms()
    ids = _write_users(sql, accounts.users, created)
    ids.update(existing_users(sql, accounts.referenced() - ids.keys()))
    friendships = _write_friendships(sql, accounts.friendships, ids, created)
    memberships = _write_groups(sql, accounts.groups, ids, created)
    return Imported(
        users=len(accounts.users),
        friendships=friendships,
        groups=len(accounts.groups),
        memberships=memberships,
    )


def _write_users(sql: Sql, users: Sequence[NewUser], created: int) -> dict[str, int]:
    """The new users; their ids by name."""
    ids: dict[str, int] = {}
    for chunk in _chunks(users, BATCH_ROWS):
        sql.many(
            "INSERT INTO users (name, name_key, look_key, password_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (user.name, name_key(user.name), look_key(user.name), user.password_hash, created)
                for user in chunk
            ],
        )
        ids.update(_ids_by_key(sql, "users", [user.name for user in chunk]))
    return ids


def _write_friendships(
    sql: Sql, friendships: Sequence[tuple[str, str]], ids: Mapping[str, int], created: int
) -> int:
    """Both rows of each friendship; how many friendships."""
    pairs = sorted({_pair(ids[a], ids[b]) for a, b in friendships})
    rows = [(a, b, created) for a, b in pairs] + [(b, a, created) for a, b in pairs]
    for chunk in _chunks(rows, BATCH_ROWS):
        sql.many("INSERT INTO friends (user_id, friend_id, created_at) VALUES (?, ?, ?)", chunk)
    return len(pairs)


def _write_groups(
    sql: Sql, groups: Sequence[NewGroup], ids: Mapping[str, int], created: int
) -> int:
    """The groups with their members (the creator as ``creator``); how many members."""
    members: dict[str, dict[int, str]] = {}
    for group in groups:
        roles = {ids[name]: "normal" for name in group.members}
        roles[ids[group.creator]] = "creator"
        members[group.name] = roles
    group_ids: dict[str, int] = {}
    for chunk in _chunks(groups, BATCH_ROWS):
        sql.many(
            "INSERT INTO chat_groups"
            " (name, name_key, look_key, description, creator_id, created_at, member_count)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    g.name,
                    name_key(g.name),
                    look_key(g.name),
                    g.description,
                    ids[g.creator],
                    created,
                    len(members[g.name]),
                )
                for g in chunk
            ],
        )
        group_ids.update(_ids_by_key(sql, "chat_groups", [g.name for g in chunk]))
    rows = [
        (group_ids[name], user_id, role, created)
        for name, roles in members.items()
        for user_id, role in sorted(roles.items())
    ]
    for batch in _chunks(rows, BATCH_ROWS):
        sql.many(
            "INSERT INTO group_members (group_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)",
            batch,
        )
    # Members who have devices already (existing users) follow the new groups on each of
    # them from the start (a new group's log is empty: position 0), as a join does
    # (chat.store.streams.follow_group); new users' first device starts there anyway.
    new_groups = sorted(group_ids.values())
    for ids_chunk in _chunks(new_groups, BATCH_ROWS):
        marks = ", ".join("?" for _ in ids_chunk)
        sql.execute(
            "INSERT INTO device_groups (user_id, device, group_id, pos)"
            " SELECT d.user_id, d.device, gm.group_id, 0 FROM group_members gm"
            f" JOIN devices d ON d.user_id = gm.user_id WHERE gm.group_id IN ({marks})",
            ids_chunk,
        )
    return len(rows)


def _pair(a: int, b: int) -> tuple[int, int]:
    if a == b:
        raise ValueError(f"user {a} cannot be their own friend")
    return (a, b) if a < b else (b, a)


def _taken(sql: Sql, table: str, names: Iterable[str]) -> set[str]:
    """Which of ``names`` ``table`` holds already, by exact name, ``name_key`` or
    ``look_key`` (as ``create_user`` and ``create_group`` refuse them)."""
    wanted = sorted(set(names))
    if not wanted:
        return set()
    by_key: dict[str, list[str]] = {}
    for name in wanted:
        by_key.setdefault(name_key(name), []).append(name)
    taken: set[str] = set()
    for chunk in _chunks(sorted(by_key), BATCH_ROWS):
        marks = ", ".join("?" for _ in chunk)
        for row in sql.all(f"SELECT name_key FROM {table} WHERE name_key IN ({marks})", chunk):
            taken.update(by_key.get(text(row[0]), ()))
    by_look: dict[bytes, list[str]] = {}
    for name in wanted:
        by_look.setdefault(look_key(name), []).append(name)
    for look_chunk in _chunks(sorted(by_look), BATCH_ROWS):
        marks = ", ".join("?" for _ in look_chunk)
        for row in sql.all(f"SELECT look_key FROM {table} WHERE look_key IN ({marks})", look_chunk):
            taken.update(by_look.get(bytes(row[0]), ()))
    for chunk in _chunks(wanted, BATCH_ROWS):
        marks = ", ".join("?" for _ in chunk)
        taken.update(
            text(row[0])
            for row in sql.all(f"SELECT name FROM {table} WHERE name IN ({marks})", chunk)
        )
    return taken


def _ids_by_key(sql: Sql, table: str, names: Sequence[str]) -> dict[str, int]:
    """The ids of rows just inserted under ``names`` (found by their unique key)."""
    by_key = {name_key(name): name for name in names}
    marks = ", ".join("?" for _ in by_key)
    rows = sql.all(f"SELECT id, name_key FROM {table} WHERE name_key IN ({marks})", list(by_key))
    return {by_key[text(row[1])]: int(row[0]) for row in rows}


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
