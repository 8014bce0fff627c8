"""Streams and device positions: what is kept for each device, without a row per message.

Every message belongs to one *stream*: its recipient's inbox (a one-to-one message)
or its group's log (a group message). A stream numbers its messages 1, 2, 3, ...
(``messages.pos``); the numbers are handed out under the row lock of the stream's
owner (``users.inbox_head``, ``chat_groups.log_head``), so the positions of one
stream commit in increasing order: a reader that sees position P committed sees
every lower one too, and "everything after P" can never skip a message that
commits late, which AUTO_INCREMENT ids do not promise across concurrent
transactions. (A position can be skipped, never reused: a send that fails after
it got its number leaves a hole, which readers simply do not find.)

A *device* (``devices``: a user and a device name, ``""`` for logins without one)
has a position in its user's inbox and one in each of its user's groups
(``device_groups``): it has had every message of that stream up to there. What lies
beyond is kept for it. So storing a group message writes one row, whatever the
number of members, and delivering moves a few positions forward in batches
(``advance``), instead of deleting a row per message and member.

Stream keys: ``INBOX`` (0) is the user's own inbox; a positive key is a group id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from .records import text
from .sql import Sql

INBOX = 0
"""The stream key of a user's inbox (group streams are keyed by the group id)."""

DEVICE_IDLE_MS = 30 * 24 * 3600 * 1000
"""A device not logged in for this long is forgotten (protocol 1.2)."""
MAX_KNOWN_DEVICES = 20
"""Known devices per user; the login of one more forgets the least recently seen."""
MAX_QUERY_ARGS = 2_000
"""A batched statement is cut once it has this many parameters."""


@attrs.frozen
class KeptMessage:
    """One message of a stream, with what its event needs."""

    stream: int
    pos: int
    message_id: int
    sender_id: int
    sender_name: str
    recipient_id: int | None
    group_id: int | None
    body: str
    ts: int

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> KeptMessage:
        group_id = None if row[5] is None else int(row[5])
        return cls(
            stream=INBOX if group_id is None else group_id,
            pos=int(row[0]),
            message_id=int(row[1]),
            sender_id=int(row[2]),
            sender_name=text(row[3]),
            recipient_id=None if row[4] is None else int(row[4]),
            group_id=group_id,
            body=text(row[6]),
            ts=int(row[7]),
        )


@attrs.frozen
class StreamRange:
    """Messages of one stream of one user's device to read: positions above ``after``,
    up to ``upto`` (None: no bound), at most ``limit``; ``without_sender``: leave out
    the messages this user sent (their own group messages are not kept for them)."""

    user_id: int
    stream: int
    after: int
    upto: int | None
    limit: int
    without_sender: bool = False


@attrs.frozen
class DeviceStart:
    """A device's login, as the store saw it in one transaction: each stream's stored
    position, its head then, and how many messages are kept for the device between
    the two (its own group messages left out)."""

    positions: dict[int, int]
    heads: dict[int, int]
    kept: int
    new: bool
    """The device was not known before this login."""
    forgotten: list[str] = attrs.field(factory=list)
    """Devices this login forgot (idle too long, or one too many)."""


@attrs.frozen
class DeviceRecord:
    device: str
    last_seen: int


# --- positions handed out when storing ------------------------------------------------


def allocate_inbox(sql: Sql, counts: Mapping[int, int]) -> dict[int, int]:
    """Take ``counts[user]`` consecutive positions in each user's inbox; returns the
    first of each. The users' rows stay locked until the transaction ends, so a
    stream's positions commit in order. One statement for all users (their rows locked
    in ascending id order). A batch that also locks groups (a group send between direct
    sends) can still deadlock with another node's batch; the pool runs a deadlocked
    batch again."""
    if not counts:
        return {}
    users = sorted(counts)
    cases = " ".join("WHEN ? THEN ?" for _ in users)
    args: list[int] = []
    for user in users:
        args += (user, counts[user])
    marks = ", ".join("?" for _ in users)
    sql.execute(
        f"UPDATE users SET inbox_head = inbox_head + CASE id {cases} END WHERE id IN ({marks})",
        (*args, *users),
    )
    rows = sql.all(f"SELECT id, inbox_head FROM users WHERE id IN ({marks})", users)
    return {int(row[0]): int(row[1]) - counts[int(row[0])] + 1 for row in rows}


def allocate_log(sql: Sql, group_id: int) -> tuple[int, int]:
    """Take the next position in a group's log (the group's row stays locked until
    the transaction ends); returns it and the group's member count."""
    sql.execute("UPDATE chat_groups SET log_head = log_head + 1 WHERE id = ?", (group_id,))
    row = sql.one("SELECT log_head, member_count FROM chat_groups WHERE id = ?", (group_id,))
    return int(row[0]), int(row[1])


# --- reading streams ------------------------------------------------------------------

_COLUMNS = "m.pos, m.id, m.sender_id, u.name, m.recipient_id, m.group_id, m.body, m.ts"


def read_ranges(sql: Sql, ranges: Sequence[StreamRange]) -> list[list[KeptMessage]]:
    """Each range's messages, ascending by position; all ranges in one statement (one
    snapshot), each its own index range (``messages_by_inbox``, ``messages_by_log``)."""
    if not ranges:
        return []
    parts: list[str] = []
    args: list[Any] = []
    for number, wanted in enumerate(ranges):
        if wanted.stream == INBOX:
            where, owner = "m.recipient_id = ?", wanted.user_id
        else:
            where, owner = "m.group_id = ?", wanted.stream
        bound = "" if wanted.upto is None else " AND m.pos <= ?"
        sender = " AND m.sender_id <> ?" if wanted.without_sender else ""
        # In a derived table of its own: SQLite allows ORDER BY and LIMIT only there
        # inside a compound SELECT.
        parts.append(
            f"SELECT * FROM (SELECT {number} AS r, {_COLUMNS} FROM messages m"
            f" JOIN users u ON u.id = m.sender_id WHERE {where} AND m.pos > ?{bound}{sender}"
            f" ORDER BY m.pos LIMIT ?) p{number}"
        )
        args += (owner, wanted.after)
        if wanted.upto is not None:
            args.append(wanted.upto)
        if wanted.without_sender:
            args.append(wanted.user_id)
        args.append(wanted.limit)
    found: list[list[KeptMessage]] = [[] for _ in ranges]
    for row in sql.all(" UNION ALL ".join(parts), args):
        found[int(row[0])].append(KeptMessage.from_row(row[1:]))
    for messages in found:
        messages.sort(key=lambda message: message.pos)
    return found


def merge(streams: Iterable[Sequence[KeptMessage]], limit: int) -> list[KeptMessage]:
    """Messages of several streams in the order they were stored (message ids grow in
    that order, so one sender's messages keep their order across streams), at most
    ``limit``: a prefix of each stream, so each stream's position can move past what
    was taken without skipping anything."""
    merged = sorted(
        (message for stream in streams for message in stream), key=lambda m: m.message_id
    )
    return merged[:limit]


# --- devices --------------------------------------------------------------------------


def device_login(
    sql: Sql, user_id: int, device: str, now: int, online: Iterable[str]
) -> DeviceStart:
    """Make the device known (or note it was seen), forget idle or surplus devices,
    and read its positions, the heads and the kept count.

    A new device starts at each stream's head: it gets what is stored from now on,
    and reads older messages with ``history``. The very first device of a user who
    never had one starts at the beginning of the inbox (and of each group, where the
    user joined it) instead, so that what was sent to an account before its first
    login is kept for it, as in version 1."""
    logged_in = set(online)
    row = sql.one(
        f"SELECT devices_since, inbox_head FROM users WHERE id = ?{sql.dialect.for_update}",
        (user_id,),
    )
    devices_since, inbox_head = row[0], int(row[1])
    known = {
        text(r[0]): int(r[1])
        for r in sql.all("SELECT device, last_seen FROM devices WHERE user_id = ?", (user_id,))
    }
    new = device not in known
    forget = [
        name
        for name, seen in known.items()
        if name != device and name not in logged_in and now - seen > DEVICE_IDLE_MS
    ]
    remaining = [name for name in known if name not in forget]
    if new and len(remaining) >= MAX_KNOWN_DEVICES:
        idle = sorted(
            (known[name], name) for name in remaining if name not in logged_in and name != device
        )
        surplus = len(remaining) - MAX_KNOWN_DEVICES + 1
        forget += [name for _, name in idle[:surplus]]
    for name in forget:
        drop_device(sql, user_id, name)
    if new:
        start = inbox_head if devices_since is not None else 0
        sql.execute(
            "INSERT INTO devices (user_id, device, inbox_pos, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?)",
            (user_id, device, start, now, now),
        )
        # The first device: each group from where the user joined it; a later one:
        # from the group's head.
        start_at = "g.log_head" if devices_since is not None else "gm.joined_pos"
        sql.execute(
            "INSERT INTO device_groups (user_id, device, group_id, pos)"
            f" SELECT gm.user_id, ?, gm.group_id, {start_at} FROM group_members gm"
            " JOIN chat_groups g ON g.id = gm.group_id WHERE gm.user_id = ?",
            (device, user_id),
        )
        if devices_since is None:
            sql.execute("UPDATE users SET devices_since = ? WHERE id = ?", (now, user_id))
    else:
        sql.execute(
            "UPDATE devices SET last_seen = ? WHERE user_id = ? AND device = ?",
            (now, user_id, device),
        )
    # One statement, so one snapshot for every stream: each head and the count below it
    # agree, and a sender's message in one stream is never before a head while an
    # earlier one of theirs in another stream is after its head.
    positions: dict[int, int] = {}
    heads: dict[int, int] = {}
    kept = 0
    for stream, pos, head, count in sql.all(
        "SELECT 0, d.inbox_pos, u.inbox_head, (SELECT COUNT(*) FROM messages m"
        " WHERE m.recipient_id = u.id AND m.pos > d.inbox_pos AND m.pos <= u.inbox_head)"
        " FROM devices d JOIN users u ON u.id = d.user_id"
        " WHERE d.user_id = ? AND d.device = ?"
        " UNION ALL"
        " SELECT c.group_id, c.pos, g.log_head, (SELECT COUNT(*) FROM messages m"
        " WHERE m.group_id = c.group_id AND m.pos > c.pos AND m.pos <= g.log_head"
        " AND m.sender_id <> c.user_id)"
        " FROM device_groups c JOIN chat_groups g ON g.id = c.group_id"
        " WHERE c.user_id = ? AND c.device = ?",
        (user_id, device, user_id, device),
    ):
        positions[int(stream)] = int(pos)
        heads[int(stream)] = int(head)
        kept += int(count)
    return DeviceStart(positions, heads, kept, new, sorted(forget))


def drop_device(sql: Sql, user_id: int, device: str) -> bool:
    """Forget a device: its positions (so nothing is kept for it any more) and every
    token issued to it. False if it was not known."""
    sql.execute("DELETE FROM device_groups WHERE user_id = ? AND device = ?", (user_id, device))
    sql.execute("DELETE FROM login_tokens WHERE user_id = ? AND device = ?", (user_id, device))
    found = sql.one("SELECT 1 FROM devices WHERE user_id = ? AND device = ?", (user_id, device))
    sql.execute("DELETE FROM devices WHERE user_id = ? AND device = ?", (user_id, device))
    return found is not None


def known_devices(sql: Sql, user_id: int, now: int, online: Iterable[str]) -> list[DeviceRecord]:
    """The user's known devices (one idle too long counts as forgotten), by name."""
    logged_in = set(online)
    return sorted(
        (
            DeviceRecord(text(row[0]), int(row[1]))
            for row in sql.all(
                "SELECT device, last_seen FROM devices WHERE user_id = ?", (user_id,)
            )
            if text(row[0]) in logged_in or now - int(row[1]) <= DEVICE_IDLE_MS
        ),
        key=lambda record: record.device,
    )


def device_positions(sql: Sql, user_id: int, device: str) -> dict[int, int]:
    """A device's stored position in each of its streams (empty: not known)."""
    found: dict[int, int] = {}
    row = sql.one(
        "SELECT inbox_pos FROM devices WHERE user_id = ? AND device = ?", (user_id, device)
    )
    if row is not None:
        found[INBOX] = int(row[0])
    for group_id, pos in sql.all(
        "SELECT group_id, pos FROM device_groups WHERE user_id = ? AND device = ?",
        (user_id, device),
    ):
        found[int(group_id)] = int(pos)
    return found


def follow_group(sql: Sql, user_id: int, group_id: int) -> None:
    """The user joined a group: each of its known devices gets the group's messages
    from now on. Call after the group's row is locked (its member count updated), so
    the head read here is the one the next group message follows; the user's row is
    locked too, so a device made meanwhile (``device_login``) is not missed."""
    sql.one(f"SELECT id FROM users WHERE id = ?{sql.dialect.for_update}", (user_id,))
    sql.execute(
        "UPDATE group_members SET joined_pos = (SELECT log_head FROM chat_groups WHERE id = ?)"
        " WHERE group_id = ? AND user_id = ?",
        (group_id, group_id, user_id),
    )
    sql.execute(
        "INSERT INTO device_groups (user_id, device, group_id, pos)"
        " SELECT d.user_id, d.device, g.id, g.log_head FROM devices d"
        " JOIN chat_groups g ON g.id = ? WHERE d.user_id = ?",
        (group_id, user_id),
    )


def group_position(sql: Sql, user_id: int, device: str, group_id: int) -> int | None:
    """A device's stored position in one group's log (None: it does not follow it)."""
    row = sql.one(
        "SELECT pos FROM device_groups WHERE user_id = ? AND device = ? AND group_id = ?",
        (user_id, device, group_id),
    )
    return None if row is None else int(row[0])


@attrs.frozen
class Advance:
    """A device has had its stream up to ``pos``."""

    user_id: int
    device: str
    stream: int
    pos: int


def advance(sql: Sql, moves: Sequence[Advance], seen: Mapping[tuple[int, str], int]) -> None:
    """Move devices' positions forward (never back: two logins of one device, one
    after the other, may both report), and note when devices were last seen. A few
    statements for the whole batch, whatever its size."""
    greatest = sql.dialect.greatest
    newest: dict[tuple[int, str, int], int] = defaultdict(int)
    for move in moves:
        key = (move.user_id, move.device, move.stream)
        newest[key] = max(newest[key], move.pos)
    inbox = [(u, d, p) for (u, d, s), p in sorted(newest.items()) if s == INBOX]
    groups = [(u, d, s, p) for (u, d, s), p in sorted(newest.items()) if s != INBOX]
    for chunk in _chunks(inbox, MAX_QUERY_ARGS // 5):
        cases = " ".join("WHEN user_id = ? AND device = ? THEN ?" for _ in chunk)
        keys = " OR ".join("(user_id = ? AND device = ?)" for _ in chunk)
        sql.execute(
            f"UPDATE devices SET inbox_pos = {greatest}(inbox_pos, CASE {cases} END) WHERE {keys}",
            [*(v for row in chunk for v in row), *(v for u, d, _ in chunk for v in (u, d))],
        )
    for chunk in _chunks(groups, MAX_QUERY_ARGS // 7):
        cases = " ".join("WHEN user_id = ? AND device = ? AND group_id = ? THEN ?" for _ in chunk)
        keys = " OR ".join("(user_id = ? AND device = ? AND group_id = ?)" for _ in chunk)
        sql.execute(
            f"UPDATE device_groups SET pos = {greatest}(pos, CASE {cases} END) WHERE {keys}",
            [*(v for row in chunk for v in row), *(v for u, d, g, _ in chunk for v in (u, d, g))],
        )
    for (user_id, device), at in sorted(seen.items()):
        sql.execute(
            "UPDATE devices SET last_seen = ? WHERE user_id = ? AND device = ?",
            (at, user_id, device),
        )


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + size]
