"""Values the store hands out: plain frozen records built from rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Literal, TypeVar

import attrs

Role = Literal["creator", "normal"]
T = TypeVar("T")


def text(value: Any) -> str:
    """A text column: MySQL returns VARBINARY columns as bytes, SQLite as str."""
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


@attrs.frozen
class UserRecord:
    id: int
    name: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> UserRecord:
        return cls(id=int(row[0]), name=text(row[1]))


@attrs.frozen
class Credentials:
    id: int
    name: str
    password_hash: str
    last_login_ms: int | None = None
    """When a device of the account was last seen (a login, or one being used), in ms
    since the epoch; None: never. Password checks of recently used accounts go first
    (``chat.server.passwords``)."""

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Credentials:
        last = row[3] if len(row) > 3 else None
        return cls(
            id=int(row[0]),
            name=text(row[1]),
            password_hash=text(row[2]),
            last_login_ms=None if last is None else int(last),
        )


@attrs.frozen
class GroupRecord:
    id: int
    name: str
    description: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> GroupRecord:
        return cls(id=int(row[0]), name=text(row[1]), description=text(row[2]))


@attrs.frozen
class MemberRecord:
    id: int
    name: str
    role: Role


@attrs.frozen
class MembershipRecord:
    """A group as one of its members sees it: at login with its first members (by id;
    all of them unless ``member_count`` says there are more), in a page without."""

    group: GroupRecord
    role: Role
    members: list[MemberRecord]
    member_count: int


@attrs.define
class StoredMessage:
    """The answer to a send: what the ``ok`` carries, and which stream to wake. (Never
    changed once made; not frozen, as one is made for every message stored:
    ``chat.server.delivery.Mark`` says why.)"""

    message_id: int
    ts: int
    pos: int
    """Its position in its stream (the recipient's inbox, or the group's log)."""
    created: bool
    """False when the ``cid`` had been used already: nothing new is stored."""
    recipient_id: int | None = None
    group_id: int | None = None
    member_count: int = 0
    """A group message: the group's members when it was stored (its fan-out)."""


@attrs.frozen
class HistoryMessage:
    """One message of a conversation, with what its event needs."""

    message_id: int
    sender_id: int
    sender_name: str
    recipient_id: int | None
    group_id: int | None
    body: str
    ts: int

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> HistoryMessage:
        """``row``: id, sender_id, recipient_id, group_id, body, ts, sender's name."""
        return cls(
            message_id=int(row[0]),
            sender_id=int(row[1]),
            sender_name=text(row[6]),
            recipient_id=None if row[2] is None else int(row[2]),
            group_id=None if row[3] is None else int(row[3]),
            body=text(row[4]),
            ts=int(row[5]),
        )


@attrs.frozen
class PresenceAudience:
    """Who hears about a user's presence: the user (with the name the event shows)
    and every friend, logged in or not (routing skips those who are not)."""

    user: UserRecord
    friend_ids: tuple[int, ...]
    befriended_at: tuple[int, ...] = ()
    """When each friendship was made (ms), in the order of ``friend_ids``."""

    def friends_before(self, at_ms: int) -> tuple[int, ...]:
        """The friends of the user at ``at_ms``: a change is told to those only."""
        if not self.befriended_at:
            return self.friend_ids
        return tuple(
            friend
            for friend, since in zip(self.friend_ids, self.befriended_at, strict=True)
            if since <= at_ms
        )


@attrs.frozen
class HistoryPage:
    messages: list[HistoryMessage]
    """Ascending by id."""
    more: bool


@attrs.frozen
class LoginSnapshot:
    """What a login shows, read with bounds: the lowest ids first, and whether the
    database holds more than was read (the reply is cut to size afterwards)."""

    friends: list[UserRecord]
    friends_more: bool
    groups: list[MembershipRecord]
    groups_more: bool


@attrs.frozen
class Page(Generic[T]):
    """Part of a list ascending by id; ``more``: the database holds ids beyond it."""

    items: list[T]
    more: bool
