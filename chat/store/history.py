"""Reading history: a page of one conversation, from one index range per direction.

A group's messages are one range of ``messages_by_group``; a one-to-one
conversation is two (A to B on ``messages_by_pair``, B to A on
``messages_to_pair``), or one when a user wrote to themself. Each range gives at
most ``limit + 1`` ids from the page's anchor outwards, and the ranges are read
in one statement (``UNION ALL``), so from one snapshot: a page never holds a newer
message of one direction while missing an older one of the other. The extra id
says whether ``more`` exist beyond the page.

Ids first, rows after: asked for ids only, the index alone answers (MariaDB reads
a range from the anchor). Asked for whole rows at once, MariaDB 10.11 chose to
walk the conversation from its newest message down to the anchor instead, which
made a page deep in a conversation of 100,000 messages take 50-250 ms instead of
a few (docs/performance.md). The page's rows are then read by primary key.

``before`` and ``after`` are positions, not lookups: any positive integer works,
whether or not it is a message of the conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import HistoryMessage, HistoryPage
from .sql import MAX_ROW_ID, Sql

_COLUMNS = "m.id, m.sender_id, m.recipient_id, m.group_id, m.body, m.ts, u.name"


def read_page(
    sql: Sql,
    ranges: Sequence[tuple[str, tuple[int, ...]]],
    *,
    before: int | None,
    after: int | None,
    limit: int,
) -> HistoryPage:
    """The page of the messages matching any of ``ranges`` (a WHERE clause on
    ``messages`` and its arguments), ascending by id, and whether more exist beyond it."""
    forward = after is not None
    if after is not None and after >= MAX_ROW_ID:
        return HistoryPage(messages=[], more=False)  # no id lies above it
    bound: tuple[str, tuple[int, ...]]
    if after is not None:
        bound = (" AND id > ?", (after,))
    elif before is not None and before <= MAX_ROW_ID:
        bound = (" AND id < ?", (before,))
    else:
        bound = ("", ())  # the newest; a ``before`` above every id means the same
    order = "ASC" if forward else "DESC"
    parts: list[str] = []
    args: list[Any] = []
    for where, where_args in ranges:
        # Each range in a derived table of its own: SQLite allows ORDER BY and LIMIT
        # only there inside a compound SELECT.
        parts.append(
            f"SELECT id FROM (SELECT id FROM messages"
            f" WHERE {where}{bound[0]} ORDER BY id {order} LIMIT ?) r{len(parts)}"
        )
        args += (*where_args, *bound[1], limit + 1)
    ids = sorted(int(row[0]) for row in sql.all(" UNION ALL ".join(parts), args))
    if not forward:
        ids.reverse()
    more = len(ids) > limit
    page = sorted(ids[:limit])
    if not page:
        return HistoryPage(messages=[], more=more)
    marks = ", ".join("?" for _ in page)
    rows = sql.all(
        f"SELECT {_COLUMNS} FROM messages m JOIN users u ON u.id = m.sender_id"
        f" WHERE m.id IN ({marks}) ORDER BY m.id",
        page,
    )
    return HistoryPage(messages=[HistoryMessage.from_row(row) for row in rows], more=more)


def direct_ranges(user_id: int, peer_id: int) -> list[tuple[str, tuple[int, ...]]]:
    """Both directions of a one-to-one conversation (one, for a user's notes to self)."""
    mine = ("sender_id = ? AND recipient_id = ?", (user_id, peer_id))
    if user_id == peer_id:
        return [mine]
    return [mine, ("sender_id = ? AND recipient_id = ?", (peer_id, user_id))]


def group_range(group_id: int) -> list[tuple[str, tuple[int, ...]]]:
    return [("group_id = ?", (group_id,))]
