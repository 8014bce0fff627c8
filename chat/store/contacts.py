"""Contacts of version 1.1: removing friends, blocking, lists read a page at a time,
and the login's bounded snapshot. Each function runs inside the caller's
transaction (``Store`` owns it) and holds one use case's read-check-write.

Lists are ascending by id and read one row beyond the page, which says whether
there is more. The login reads at most what could ever fit in its reply (the
reply is cut to the byte later, in ``chat.protocol.login_cut``): a user with
5,000 friends and 50 groups of 2,000 members costs a few thousand rows, not
105,000.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from chat.protocol.bounded import water_fill

from .errors import (
    AlreadyBlocked,
    CannotBlockSelf,
    NoSuchGroup,
    NotAMember,
    NotBlocked,
    NotFriends,
)
from .lookups import user_by_id
from .records import (
    GroupRecord,
    LoginSnapshot,
    MemberRecord,
    MembershipRecord,
    Page,
    PresenceAudience,
    Role,
    UserRecord,
    text,
)
from .requests import drop_between
from .sql import MAX_ROW_ID, Sql, no_row, now_ms

MEMBER_QUERY_GROUPS = 50
"""Groups whose first members are read by one statement (a UNION of index ranges)."""


def role_of(value: Any) -> Role:
    return "creator" if text(value) == "creator" else "normal"


def _end_friendship(sql: Sql, one: int, other: int) -> None:
    sql.execute(
        "DELETE FROM friends"
        " WHERE (user_id = ? AND friend_id = ?) OR (user_id = ? AND friend_id = ?)",
        (one, other, other, one),
    )


# --- friends ------------------------------------------------------------------------


def remove_friend(sql: Sql, user_id: int, friend_id: int) -> UserRecord:
    """End a friendship, both directions; returns the former friend."""
    friend = user_by_id(sql, friend_id)
    if not sql.one(
        "SELECT 1 FROM friends WHERE user_id = ? AND friend_id = ?", (user_id, friend_id)
    ):
        raise NotFriends()
    _end_friendship(sql, user_id, friend_id)
    return friend


def friends_page(sql: Sql, user_id: int, after: int, limit: int) -> Page[UserRecord]:
    after = min(after, MAX_ROW_ID)  # a larger id names no row (and fits no column)
    rows = sql.all(
        "SELECT u.id, u.name FROM friends f JOIN users u ON u.id = f.friend_id"
        " WHERE f.user_id = ? AND f.friend_id > ? ORDER BY f.friend_id LIMIT ?",
        (user_id, after, limit + 1),
    )
    return Page([UserRecord.from_row(row) for row in rows[:limit]], len(rows) > limit)


# --- blocking -----------------------------------------------------------------------


def block(sql: Sql, user_id: int, target_id: int) -> UserRecord:
    """``user_id`` blocks ``target_id``: any friendship between them ends."""
    if user_id == target_id:
        raise CannotBlockSelf()
    target = user_by_id(sql, target_id)
    if sql.one(
        "SELECT 1 FROM blocks WHERE blocker_id = ? AND blocked_id = ?", (user_id, target_id)
    ):
        raise AlreadyBlocked()
    try:
        sql.execute(
            "INSERT INTO blocks (blocker_id, blocked_id, created_at) VALUES (?, ?, ?)",
            (user_id, target_id, now_ms()),
        )
    except Exception as exc:
        if sql.dialect.is_integrity_error(exc):
            raise AlreadyBlocked() from exc
        raise
    _end_friendship(sql, user_id, target_id)
    drop_between(sql, user_id, target_id)  # a block ends waiting friend requests too
    return target


def unblock(sql: Sql, user_id: int, target_id: int) -> UserRecord:
    target = user_by_id(sql, target_id)
    if not sql.one(
        "SELECT 1 FROM blocks WHERE blocker_id = ? AND blocked_id = ?", (user_id, target_id)
    ):
        raise NotBlocked()
    sql.execute("DELETE FROM blocks WHERE blocker_id = ? AND blocked_id = ?", (user_id, target_id))
    return target


def blocked_page(sql: Sql, user_id: int, after: int, limit: int) -> Page[UserRecord]:
    after = min(after, MAX_ROW_ID)  # a larger id names no row (and fits no column)
    rows = sql.all(
        "SELECT u.id, u.name FROM blocks b JOIN users u ON u.id = b.blocked_id"
        " WHERE b.blocker_id = ? AND b.blocked_id > ? ORDER BY b.blocked_id LIMIT ?",
        (user_id, after, limit + 1),
    )
    return Page([UserRecord.from_row(row) for row in rows[:limit]], len(rows) > limit)


def blockers_among(sql: Sql, user_id: int, candidates: Sequence[int]) -> set[int]:
    """Which of ``candidates`` have blocked ``user_id``."""
    ids = sorted({c for c in candidates if not no_row(c)})
    found: set[int] = set()
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        marks = ", ".join("?" for _ in chunk)
        found.update(
            int(row[0])
            for row in sql.all(
                f"SELECT blocker_id FROM blocks WHERE blocked_id = ? AND blocker_id IN ({marks})",
                (user_id, *chunk),
            )
        )
    return found


def presence_audiences(sql: Sql, user_ids: Sequence[int]) -> dict[int, PresenceAudience]:
    """Each of these users (name included) with every friend and when each friendship
    was made; absent if no such user."""
    wanted = sorted({user_id for user_id in user_ids if not no_row(user_id)})
    names: dict[int, str] = {}
    friends: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        marks = ", ".join("?" for _ in chunk)
        for row in sql.all(
            "SELECT u.id, u.name, f.friend_id, f.created_at FROM users u"
            " LEFT JOIN friends f ON f.user_id = u.id"
            f" WHERE u.id IN ({marks}) ORDER BY u.id, f.friend_id",
            chunk,
        ):
            user_id = int(row[0])
            names[user_id] = text(row[1])
            if row[2] is not None:
                friends[user_id].append((int(row[2]), int(row[3])))
    return {
        user_id: PresenceAudience(
            UserRecord(user_id, name),
            tuple(friend for friend, _ in friends[user_id]),
            tuple(since for _, since in friends[user_id]),
        )
        for user_id, name in names.items()
    }


# --- groups -------------------------------------------------------------------------


def groups_page(sql: Sql, user_id: int, after: int, limit: int) -> Page[MembershipRecord]:
    after = min(after, MAX_ROW_ID)  # a larger id names no row (and fits no column)
    rows = _group_rows(sql, user_id, after, limit + 1)
    groups = [
        MembershipRecord(GroupRecord.from_row(row), role_of(row[3]), [], int(row[4]))
        for row in rows[:limit]
    ]
    return Page(groups, len(rows) > limit)


def require_member(sql: Sql, user_id: int, group_id: int) -> None:
    """Raise ``NoSuchGroup`` or ``NotAMember`` unless ``user_id`` is in the group: one
    query for both (what sending to, reading and listing a group all check first)."""
    row = (
        None
        if no_row(group_id)
        else sql.one(
            "SELECT g.id, gm.user_id FROM chat_groups g LEFT JOIN group_members gm"
            " ON gm.group_id = g.id AND gm.user_id = ? WHERE g.id = ?",
            (user_id, group_id),
        )
    )
    if row is None:
        raise NoSuchGroup(group_id)
    if row[1] is None:
        raise NotAMember()


def members_page(
    sql: Sql, user_id: int, group_id: int, after: int, limit: int
) -> Page[MemberRecord]:
    require_member(sql, user_id, group_id)
    after = min(after, MAX_ROW_ID)  # a larger id names no row (and fits no column)
    rows = sql.all(
        "SELECT u.id, u.name, gm.role FROM group_members gm JOIN users u ON u.id = gm.user_id"
        " WHERE gm.group_id = ? AND gm.user_id > ? ORDER BY gm.user_id LIMIT ?",
        (group_id, after, limit + 1),
    )
    members = [MemberRecord(int(r[0]), text(r[1]), role_of(r[2])) for r in rows[:limit]]
    return Page(members, len(rows) > limit)


def _group_rows(sql: Sql, user_id: int, after: int, count: int) -> list[Any]:
    return sql.all(
        "SELECT g.id, g.name, g.description, gm.role, g.member_count FROM group_members gm"
        " JOIN chat_groups g ON g.id = gm.group_id"
        " WHERE gm.user_id = ? AND gm.group_id > ? ORDER BY gm.group_id LIMIT ?",
        (user_id, after, count),
    )


# --- login --------------------------------------------------------------------------


@attrs.frozen
class LoginReads:
    """How much a login reads: at most ``groups`` groups; then, knowing their member
    counts, ``friends(counts)`` friends; then, knowing how many friends there were,
    ``members(friends_read, counts)`` members in all, shared fairly among the groups.
    (The bounds are the most the reply could show: ``chat.protocol.login_cut``.)"""

    groups: int
    friends: Callable[[list[int]], int]
    members: Callable[[int, list[int]], int]


def login_snapshot(sql: Sql, user_id: int, reads: LoginReads) -> LoginSnapshot:
    """The user's first groups, friends and members (each from the lowest id), within
    ``reads`` (what is kept for the device comes from ``streams.device_login``)."""
    group_rows = _group_rows(sql, user_id, 0, reads.groups + 1)
    groups_more = len(group_rows) > reads.groups
    group_rows = group_rows[: reads.groups]
    counts = [int(row[4]) for row in group_rows]
    friend_page = friends_page(sql, user_id, 0, reads.friends(counts))
    wanted = water_fill(counts, reads.members(len(friend_page.items), counts))
    firsts = _first_members(sql, [(int(r[0]), n) for r, n in zip(group_rows, wanted, strict=True)])
    memberships = [
        MembershipRecord(
            GroupRecord.from_row(row), role_of(row[3]), firsts.get(int(row[0]), []), int(row[4])
        )
        for row in group_rows
    ]
    return LoginSnapshot(
        friends=friend_page.items,
        friends_more=friend_page.more,
        groups=memberships,
        groups_more=groups_more,
    )


def _first_members(sql: Sql, wanted: Sequence[tuple[int, int]]) -> dict[int, list[MemberRecord]]:
    """The ``n`` lowest-id members of each ``(group, n)``: one index range each, many
    ranges per statement."""
    found: dict[int, list[MemberRecord]] = {group_id: [] for group_id, _ in wanted}
    asked = [(group_id, n) for group_id, n in wanted if n > 0]
    for start in range(0, len(asked), MEMBER_QUERY_GROUPS):
        chunk = asked[start : start + MEMBER_QUERY_GROUPS]
        parts = [
            f"SELECT * FROM (SELECT gm.group_id, u.id, u.name, gm.role FROM group_members gm"
            f" JOIN users u ON u.id = gm.user_id WHERE gm.group_id = ?"
            f" ORDER BY gm.user_id LIMIT ?) m{number}"
            for number in range(len(chunk))
        ]
        args: list[int] = []
        for group_id, n in chunk:
            args += (group_id, n)
        for group_id, member_id, name, role in sql.all(" UNION ALL ".join(parts), args):
            found[int(group_id)].append(MemberRecord(int(member_id), text(name), role_of(role)))
    for members in found.values():
        members.sort(key=lambda member: member.id)
    return found
