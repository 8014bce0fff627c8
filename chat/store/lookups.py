"""Small reads that several parts of the store make inside their transactions."""

from __future__ import annotations

from .errors import NoSuchUser
from .records import UserRecord
from .sql import Sql, no_row


def user_by_id(sql: Sql, user_id: int) -> UserRecord:
    """The user (``NoSuchUser`` when there is none)."""
    row = (
        None if no_row(user_id) else sql.one("SELECT id, name FROM users WHERE id = ?", (user_id,))
    )
    if row is None:
        raise NoSuchUser(user_id)
    return UserRecord.from_row(row)


def blocked_either_way(sql: Sql, one: int, other: int) -> bool:
    """Whether either user has blocked the other."""
    return bool(
        sql.one(
            "SELECT 1 FROM blocks WHERE (blocker_id = ? AND blocked_id = ?)"
            " OR (blocker_id = ? AND blocked_id = ?)",
            (one, other, other, one),
        )
    )
