"""Case-insensitive names: the key under which a user or group name is unique.

Version 1.1 makes ``Bob`` and ``bob`` one name for registration. The stored name
stays as the user wrote it (``login`` and ``find_user`` match it exactly); beside
it, ``name_key`` holds its case-folded form, and a UNIQUE index on that column
refuses a second name with the same key, whichever node inserts it.

Rows written before migration 0004 have no key yet: SQL cannot fold case as
Unicode does, so ``backfill_name_keys`` fills them when the store opens. When
older names collide after folding (``Bob`` and ``bob`` both registered under
version 1), the lowest id gets the key and the others keep a NULL key: they keep
working, and their look-alikes are still refused through the first one's key.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from .dialect import Connection, Dialect
from .records import text
from .sql import Sql

BACKFILL_CHUNK = 500
TABLES = ("users", "chat_groups")


def name_key(name: str) -> str:
    """``name`` compared without case: NFC, case-folded, NFC again (folding can
    decompose, as ``ǰ`` does)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def backfill_name_keys(dialect: Dialect, conn: Connection) -> int:
    """Give rows without a ``name_key`` theirs where no other row holds it; returns how
    many were filled. Idempotent, and cheap once done (only older look-alikes stay NULL)."""
    filled = 0
    for table in TABLES:
        dialect.begin(conn, write=True)
        cursor = conn.cursor()
        try:
            sql = Sql(cursor, dialect)
            filled += _backfill(sql, table)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cursor.close()
    return filled


def _backfill(sql: Sql, table: str) -> int:
    rows = sql.all(f"SELECT id, name FROM {table} WHERE name_key IS NULL ORDER BY id")
    if not rows:
        return 0
    wanted: list[tuple[int, str]] = [(int(row[0]), name_key(text(row[1]))) for row in rows]
    taken: set[str] = set()
    keys = sorted({key for _, key in wanted})
    for start in range(0, len(keys), BACKFILL_CHUNK):
        chunk = keys[start : start + BACKFILL_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        taken.update(
            text(row[0])
            for row in sql.all(f"SELECT name_key FROM {table} WHERE name_key IN ({marks})", chunk)
        )
    updates: list[Sequence[Any]] = []
    for row_id, key in wanted:  # ascending ids: the oldest name of a look-alike set wins
        if key not in taken:
            taken.add(key)
            updates.append((key, row_id))
    if updates:
        sql.many(f"UPDATE {table} SET name_key = ? WHERE id = ?", updates)
    return len(updates)
