"""Conversations and read markers (protocol 1.2): a user's chat list, at a cost that
does not grow with history.

- **One-to-one.** ``conversations`` holds a row per user and peer: ``last_id``, the
  newest message between them, and ``read_id``, the user's read marker. Every batch
  of direct sends moves ``last_id`` forward with one statement (``note_direct``, inside
  the send's own transaction, so the list never lags a committed message); it keeps
  the greater id, so batches committing out of id order cannot move it back. The list
  newest first is one range of ``conversations_by_activity``.
- **Groups.** Nothing is written per message: a group's newest message is the top of
  its log (``messages_by_log``, one index dive per group of the user: a group's
  positions are handed out under its row lock, so they grow with the ids), and the
  member's marker lives in ``group_members.read_id`` (one per membership). (Asked for
  the greatest id instead, MariaDB 10.11 read the group's whole log.)
- **Unread.** For each conversation of the page, the messages from others above the
  marker, counted from an index alone and stopped at ``UNREAD_CAP``: at most 999
  index entries per conversation, whatever the history.
- **Markers only move forward.** ``mark_read`` locks the marker's row and writes only
  when the new id is higher: one small write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from .contacts import require_member
from .errors import NoSuchMessage, NoSuchUser
from .records import HistoryMessage, Page, UserRecord, text
from .sql import MAX_ROW_ID, Sql, no_row

UNREAD_CAP = 999
"""Unread counts stop here (the protocol's "999 or more")."""
MAX_NOTED_ROWS = 600
"""Conversation rows upserted by one statement at most (3 parameters each)."""


@attrs.frozen
class ConversationRecord:
    """One conversation of a user's list: with a peer (``peer``) or a group
    (``group``, its id and name), its newest message, the user's marker and how many
    messages from others lie above it (at most ``UNREAD_CAP``)."""

    last: HistoryMessage
    read: int
    unread: int
    peer: UserRecord | None = None
    group: UserRecord | None = None
    """A group's id and name (the same shape as a user's)."""
    peer_read: int | None = None
    """A one-to-one conversation with another user: that user's marker (what the read
    receipts said), unless either has blocked the other."""


@attrs.frozen
class ReadMarked:
    """What a ``read`` did: ``moved`` (the marker went up; else nothing changed), the
    conversation's other user, and whether that user gets a read receipt (a
    one-to-one conversation with someone else, and neither has blocked the other)."""

    moved: bool
    peer: UserRecord | None = None
    receipt: bool = False


# --- at send time ---------------------------------------------------------------------


def note_direct(sql: Sql, stored: Sequence[tuple[int, int, int]]) -> None:
    """Direct messages just stored, as (sender, recipient, message id): each of the two
    users' conversation rows moves up to its newest message. One statement for the
    batch (rows in key order, so concurrent batches lock them in the same order)."""
    newest: dict[tuple[int, int], int] = {}
    for sender, recipient, message_id in stored:
        for key in ((sender, recipient), (recipient, sender)):
            newest[key] = max(newest.get(key, 0), message_id)
    rows = sorted(newest.items())
    for start in range(0, len(rows), MAX_NOTED_ROWS):
        chunk = rows[start : start + MAX_NOTED_ROWS]
        args: list[int] = []
        for (user_id, peer_id), last_id in chunk:
            args += (user_id, peer_id, last_id)
        sql.execute(
            "INSERT INTO conversations (user_id, peer_id, last_id) VALUES "
            + ", ".join("(?, ?, ?)" for _ in chunk)
            + sql.dialect.keep_greatest("user_id, peer_id", "last_id"),
            args,
        )


# --- the list -------------------------------------------------------------------------


@attrs.frozen
class _Entry:
    last_id: int
    read_id: int
    peer_id: int | None = None
    group_id: int | None = None


def conversations_page(
    sql: Sql, user_id: int, before: int | None, limit: int
) -> Page[ConversationRecord]:
    """The user's conversations whose newest message is below ``before`` (None: all),
    newest activity first, at most ``limit``; ``more``: older ones exist."""
    bound = None if before is None or before > MAX_ROW_ID else before
    if bound is not None and bound <= 1:
        return Page(items=[], more=False)  # no message id lies below it
    below = "" if bound is None else " AND last_id < ?"
    entries = [
        _Entry(last_id=int(row[1]), read_id=int(row[2]), peer_id=int(row[0]))
        for row in sql.all(
            "SELECT peer_id, last_id, read_id FROM conversations"
            f" WHERE user_id = ?{below} ORDER BY last_id DESC LIMIT ?",
            (user_id, *(() if bound is None else (bound,)), limit + 1),
        )
    ]
    for group_id, read_id, last_id in sql.all(
        "SELECT gm.group_id, gm.read_id, (SELECT m.id FROM messages m"
        " WHERE m.group_id = gm.group_id ORDER BY m.pos DESC LIMIT 1)"
        " FROM group_members gm WHERE gm.user_id = ?",
        (user_id,),
    ):
        if last_id is not None and (bound is None or int(last_id) < bound):
            entries.append(_Entry(int(last_id), int(read_id), group_id=int(group_id)))
    entries.sort(key=lambda entry: entry.last_id, reverse=True)
    more = len(entries) > limit
    page = entries[:limit]
    if not page:
        return Page(items=[], more=False)
    lasts = _messages(sql, [entry.last_id for entry in page])
    peers = _names(sql, "users", [e.peer_id for e in page if e.peer_id is not None])
    groups = _names(sql, "chat_groups", [e.group_id for e in page if e.group_id is not None])
    unread = _unread(sql, user_id, page)
    peer_read = _peer_markers(sql, user_id, [e.peer_id for e in page if e.peer_id is not None])
    items = [
        ConversationRecord(
            last=lasts[entry.last_id],
            read=entry.read_id,
            unread=count,
            peer=None if entry.peer_id is None else peers[entry.peer_id],
            group=None if entry.group_id is None else groups[entry.group_id],
            peer_read=None if entry.peer_id is None else peer_read.get(entry.peer_id),
        )
        for entry, count in zip(page, unread, strict=True)
        if entry.last_id in lasts
    ]
    return Page(items=items, more=more)


def _messages(sql: Sql, ids: Sequence[int]) -> dict[int, HistoryMessage]:
    marks = ", ".join("?" for _ in ids)
    rows = sql.all(
        "SELECT m.id, m.sender_id, m.recipient_id, m.group_id, m.body, m.ts, u.name"
        f" FROM messages m JOIN users u ON u.id = m.sender_id WHERE m.id IN ({marks})",
        ids,
    )
    return {int(row[0]): HistoryMessage.from_row(row) for row in rows}


def _names(sql: Sql, table: str, ids: Sequence[int]) -> dict[int, UserRecord]:
    if not ids:
        return {}
    marks = ", ".join("?" for _ in ids)
    rows = sql.all(f"SELECT id, name FROM {table} WHERE id IN ({marks})", sorted(set(ids)))
    return {int(row[0]): UserRecord(int(row[0]), text(row[1])) for row in rows}


def _peer_markers(sql: Sql, user_id: int, peer_ids: Sequence[int]) -> dict[int, int]:
    """Each peer's marker in its conversation with the user (by primary key), left out
    where either has blocked the other (no receipts then, so no markers either)."""
    others = sorted({peer for peer in peer_ids if peer != user_id})
    if not others:
        return {}
    marks = ", ".join("?" for _ in others)
    rows = sql.all(
        "SELECT c.user_id, c.read_id FROM conversations c"
        f" WHERE c.user_id IN ({marks}) AND c.peer_id = ? AND NOT EXISTS"
        " (SELECT 1 FROM blocks b WHERE (b.blocker_id = c.user_id AND b.blocked_id = ?)"
        " OR (b.blocker_id = ? AND b.blocked_id = c.user_id))",
        (*others, user_id, user_id, user_id),
    )
    return {int(row[0]): int(row[1]) for row in rows}


def _unread(sql: Sql, user_id: int, page: Sequence[_Entry]) -> list[int]:
    """Each entry's messages from others above its marker, at most ``UNREAD_CAP``: one
    statement, one bounded index range per conversation (``messages_by_pair`` for a
    peer, ``messages_by_group_sender`` for a group)."""
    parts: list[str] = []
    args: list[Any] = []
    for number, entry in enumerate(page):
        if entry.last_id <= entry.read_id or entry.peer_id == user_id:
            continue  # nothing above the marker; or notes to self: nobody else's
        if entry.peer_id is not None:
            where = "sender_id = ? AND recipient_id = ? AND id > ?"
            args += (entry.peer_id, user_id, entry.read_id)
        else:
            where = "group_id = ? AND id > ? AND sender_id <> ?"
            args += (entry.group_id, entry.read_id, user_id)
        args.append(UNREAD_CAP)
        parts.append(
            f"SELECT {number} AS r, COUNT(*) FROM"
            f" (SELECT id FROM messages WHERE {where} LIMIT ?) c{number}"
        )
    counts = [0] * len(page)
    if parts:
        for number, count in sql.all(" UNION ALL ".join(parts), args):
            counts[int(number)] = int(count)
    return counts


# --- markers --------------------------------------------------------------------------


def mark_read_direct(sql: Sql, user_id: int, peer_id: int, message_id: int) -> ReadMarked:
    """Move the user's marker in the conversation with ``peer_id`` up to ``message_id``
    (``NoSuchUser``; ``NoSuchMessage`` unless it is a message between the two)."""
    peer = (
        None if no_row(peer_id) else sql.one("SELECT id, name FROM users WHERE id = ?", (peer_id,))
    )
    if peer is None:
        raise NoSuchUser(peer_id)
    row = (
        None
        if no_row(message_id)
        else sql.one("SELECT sender_id, recipient_id FROM messages WHERE id = ?", (message_id,))
    )
    pair = None if row is None or row[1] is None else (int(row[0]), int(row[1]))
    if pair not in ((user_id, peer_id), (peer_id, user_id)):
        raise NoSuchMessage(message_id)
    current = sql.one(
        "SELECT read_id FROM conversations WHERE user_id = ? AND peer_id = ?"
        f"{sql.dialect.for_update}",
        (user_id, peer_id),
    )
    if current is None:  # not expected (a send writes the row); make it
        sql.execute(
            "INSERT INTO conversations (user_id, peer_id, last_id, read_id) VALUES (?, ?, ?, ?)"
            + sql.dialect.keep_greatest("user_id, peer_id", "read_id"),
            (user_id, peer_id, message_id, message_id),
        )
    elif int(current[0]) >= message_id:
        return ReadMarked(moved=False, peer=UserRecord.from_row(peer))
    else:
        sql.execute(
            "UPDATE conversations SET read_id = ? WHERE user_id = ? AND peer_id = ?",
            (message_id, user_id, peer_id),
        )
    receipt = peer_id != user_id and not sql.one(
        "SELECT 1 FROM blocks WHERE (blocker_id = ? AND blocked_id = ?)"
        " OR (blocker_id = ? AND blocked_id = ?)",
        (user_id, peer_id, peer_id, user_id),
    )
    return ReadMarked(moved=True, peer=UserRecord.from_row(peer), receipt=receipt)


def mark_read_group(sql: Sql, user_id: int, group_id: int, message_id: int) -> ReadMarked:
    """Move the member's marker in a group up to ``message_id`` (``NoSuchGroup``,
    ``NotAMember``; ``NoSuchMessage`` unless it is a message of the group)."""
    require_member(sql, user_id, group_id)
    row = (
        None
        if no_row(message_id)
        else sql.one("SELECT group_id FROM messages WHERE id = ?", (message_id,))
    )
    if row is None or row[0] is None or int(row[0]) != group_id:
        raise NoSuchMessage(message_id)
    current = sql.one(
        "SELECT read_id FROM group_members WHERE group_id = ? AND user_id = ?"
        f"{sql.dialect.for_update}",
        (group_id, user_id),
    )
    if current is None or int(current[0]) >= message_id:
        return ReadMarked(moved=False)
    sql.execute(
        "UPDATE group_members SET read_id = ? WHERE group_id = ? AND user_id = ?",
        (message_id, group_id, user_id),
    )
    return ReadMarked(moved=True)


# --- typing ---------------------------------------------------------------------------


def typing_allowed(sql: Sql, user_id: int, target_id: int) -> bool:
    """Whether ``user_id``'s typing reaches ``target_id``: they are friends and the
    target has not blocked the user (``NoSuchUser`` if the target does not exist).
    One read; nothing is written."""
    row = (
        None
        if no_row(target_id)
        else sql.one(
            "SELECT u.id,"
            " (SELECT 1 FROM friends f WHERE f.user_id = ? AND f.friend_id = u.id),"
            " (SELECT 1 FROM blocks b WHERE b.blocker_id = u.id AND b.blocked_id = ?)"
            " FROM users u WHERE u.id = ?",
            (user_id, user_id, target_id),
        )
    )
    if row is None:
        raise NoSuchUser(target_id)
    return row[1] is not None and row[2] is None
