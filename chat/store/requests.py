"""Friend requests with approval (protocol 1.2): who may see whom.

A user whose ``friend_requests`` setting is ``"approve"`` becomes nobody's friend
without saying so: ``add_friend`` towards them leaves a row in ``friend_requests``
(requester -> target) instead of a friendship, and ``accept_friend`` turns it into
one. Until then no presence flows either way (presence goes to friends only), and
``online`` about an approving user shows false to everyone who is not a friend.

Each function runs inside the caller's transaction (``Store`` owns it). A request
or a friendship between two users is decided under both users' row locks, taken in
ascending id order (so two users adding each other at the same moment cannot
deadlock, and cannot both leave a request: the second sees the first's and makes
the friendship), which also serialises the 1,000-request cap of one target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import attrs

from . import throttle
from .errors import (
    AlreadyFriends,
    Blocked,
    CannotFriendSelf,
    NoSuchRequest,
    NoSuchUser,
    RateLimited,
)
from .lookups import blocked_either_way, user_by_id
from .records import Page, UserRecord, text
from .sql import MAX_ROW_ID, Sql, no_row, now_ms

ANYONE = "anyone"
APPROVE = "approve"
MAX_WAITING_REQUESTS = 1_000
"""Requests that may wait for one user; beyond that the oldest is dropped."""

Outcome = Literal["friends", "pending", "repeat"]
"""What ``add_friend`` did: made the friendship (``friends``; also when the target
had asked the requester), left a new request (``pending``), or found the same
request waiting already (``repeat``: nothing to tell anyone)."""


@attrs.frozen
class FriendAdd:
    friend: UserRecord
    outcome: Outcome


def lock_pair(sql: Sql, one: int, other: int) -> None:
    """Row-lock both users, lowest id first (the order every caller uses)."""
    ids = sorted({i for i in (one, other) if not no_row(i)})
    marks = ", ".join("?" for _ in ids)
    sql.all(f"SELECT id FROM users WHERE id IN ({marks}) ORDER BY id{sql.dialect.for_update}", ids)


def setting_of(sql: Sql, user_id: int) -> str:
    row = sql.one("SELECT friend_requests FROM users WHERE id = ?", (user_id,))
    if row is None:
        raise NoSuchUser(user_id)
    return text(row[0])


def change_settings(sql: Sql, user_id: int, friend_requests: str | None) -> str:
    """Set what was sent; the value after the change. Requests already waiting stay
    (they can still be accepted or declined) when the setting goes back to anyone."""
    if friend_requests is not None:
        sql.execute("UPDATE users SET friend_requests = ? WHERE id = ?", (friend_requests, user_id))
    return setting_of(sql, user_id)


def add_friend(
    sql: Sql,
    user_id: int,
    friend_id: int,
    window: throttle.Window,
    max_waiting: int = MAX_WAITING_REQUESTS,
) -> FriendAdd:
    """``user_id``'s ``add_friend`` towards ``friend_id``, in the protocol's order:
    the throttle (friendships made and new requests count; refusals and repeats do
    not), then the request's own errors, then a friendship or a request."""
    lock_pair(sql, user_id, friend_id)
    bucket = f"add_friend:{user_id}"
    now = now_ms()
    wait = throttle.wait_ms(sql, bucket, window, now)
    if wait is not None:
        raise RateLimited(wait)
    if user_id == friend_id:
        raise CannotFriendSelf()
    friend = user_by_id(sql, friend_id)
    if blocked_either_way(sql, user_id, friend_id):
        raise Blocked()
    if _are_friends(sql, user_id, friend_id):
        raise AlreadyFriends()
    asked_me = _waiting(sql, target=user_id, requester=friend_id)
    if not asked_me and setting_of(sql, friend_id) == APPROVE:
        if _waiting(sql, target=friend_id, requester=user_id):
            return FriendAdd(friend, "repeat")
        sql.execute(
            "INSERT INTO friend_requests (target_id, requester_id, created_at) VALUES (?, ?, ?)",
            (friend_id, user_id, now),
        )
        _drop_oldest(sql, friend_id, max_waiting)
        throttle.record(sql, bucket, window, now)
        return FriendAdd(friend, "pending")
    _befriend(sql, user_id, friend_id, now)
    throttle.record(sql, bucket, window, now)
    return FriendAdd(friend, "friends")


def accept(sql: Sql, user_id: int, requester_id: int) -> UserRecord:
    """``user_id`` accepts ``requester_id``'s waiting request: they are friends."""
    lock_pair(sql, user_id, requester_id)
    if no_row(requester_id) or not _waiting(sql, target=user_id, requester=requester_id):
        raise NoSuchRequest()
    requester = user_by_id(sql, requester_id)
    if not _are_friends(sql, user_id, requester_id):
        _befriend(sql, user_id, requester_id, now_ms())
    else:
        drop_between(sql, user_id, requester_id)
    return requester


def decline(sql: Sql, user_id: int, requester_id: int) -> None:
    """Drop ``requester_id``'s waiting request, telling nobody."""
    if no_row(requester_id) or not _waiting(sql, target=user_id, requester=requester_id):
        raise NoSuchRequest()
    sql.execute(
        "DELETE FROM friend_requests WHERE target_id = ? AND requester_id = ?",
        (user_id, requester_id),
    )


def requests_page(sql: Sql, user_id: int, after: int, limit: int) -> Page[UserRecord]:
    """The users whose requests wait for ``user_id``, ascending by id."""
    after = min(after, MAX_ROW_ID)  # a larger id names no row (and fits no column)
    rows = sql.all(
        "SELECT u.id, u.name FROM friend_requests r JOIN users u ON u.id = r.requester_id"
        " WHERE r.target_id = ? AND r.requester_id > ? ORDER BY r.requester_id LIMIT ?",
        (user_id, after, limit + 1),
    )
    return Page([UserRecord.from_row(row) for row in rows[:limit]], len(rows) > limit)


def presence_hidden(sql: Sql, target_ids: Sequence[int], viewer_id: int) -> set[int]:
    """Which of ``target_ids`` approve requests and are not ``viewer_id``'s friends:
    their ``online`` shows false to the viewer."""
    ids = sorted({t for t in target_ids if not no_row(t) and t != viewer_id})
    if not ids:
        return set()
    marks = ", ".join("?" for _ in ids)
    rows = sql.all(
        "SELECT u.id FROM users u LEFT JOIN friends f ON f.user_id = u.id AND f.friend_id = ?"
        f" WHERE u.id IN ({marks}) AND u.friend_requests = ? AND f.user_id IS NULL",
        (viewer_id, *ids, APPROVE),
    )
    return {int(row[0]) for row in rows}


def drop_between(sql: Sql, one: int, other: int) -> None:
    """Forget requests either way between two users (a friendship made, a block)."""
    sql.execute(
        "DELETE FROM friend_requests"
        " WHERE (target_id = ? AND requester_id = ?) OR (target_id = ? AND requester_id = ?)",
        (one, other, other, one),
    )


def _befriend(sql: Sql, one: int, other: int, now: int) -> None:
    drop_between(sql, one, other)
    try:
        sql.many(
            "INSERT INTO friends (user_id, friend_id, created_at) VALUES (?, ?, ?)",
            [(one, other, now), (other, one, now)],
        )
    except Exception as exc:
        if sql.dialect.is_integrity_error(exc):
            raise AlreadyFriends() from exc
        raise


def _drop_oldest(sql: Sql, target_id: int, max_waiting: int) -> None:
    """Keep the newest ``max_waiting`` requests of ``target_id``."""
    row = sql.one(
        "SELECT id FROM friend_requests WHERE target_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
        (target_id, max_waiting),
    )
    if row is not None:
        sql.execute(
            "DELETE FROM friend_requests WHERE target_id = ? AND id <= ?", (target_id, int(row[0]))
        )


def _waiting(sql: Sql, *, target: int, requester: int) -> bool:
    return bool(
        sql.one(
            "SELECT 1 FROM friend_requests WHERE target_id = ? AND requester_id = ?",
            (target, requester),
        )
    )


def _are_friends(sql: Sql, one: int, other: int) -> bool:
    return bool(sql.one("SELECT 1 FROM friends WHERE user_id = ? AND friend_id = ?", (one, other)))
