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

Version 1.2 adds ``look_key`` (migration 0007): the digest of the UTS #39 skeleton
of the name's NFKC case-folded form (``chat.protocol.lookalike``), so that
``alice`` in fullwidth letters, or with a Cyrillic U+0430 for its ``a``, are taken once
``alice`` exists. It has a UNIQUE index
of its own, checked beside ``name_key`` (which stays: the 1.1 rule holds as it
was), and is filled for older rows the same way: in Python, when the store opens,
the lowest id of a look-alike set getting the key and the others keeping NULL.
Two names that were both registered before 1.2 and look alike therefore both keep
working; only new names that look like either are refused.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from chat.protocol.lookalike import lookalike_key

from .dialect import Connection, Dialect
from .records import text
from .sql import Sql

BACKFILL_CHUNK = 500
TABLES = ("users", "chat_groups")


def name_key(name: str) -> str:
    """``name`` compared without case: NFC, case-folded, NFC again (folding can
    decompose, as ``ǰ`` does)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def look_key(name: str) -> bytes:
    """``name``'s key under the 1.2 look-alike rule (``chat.protocol.lookalike``)."""
    return lookalike_key(name)


KEYS: tuple[tuple[str, Callable[[str], Any]], ...] = (
    ("name_key", name_key),
    ("look_key", look_key),
)
"""Each key column with the function that computes it from the name."""


def backfill_name_keys(dialect: Dialect, conn: Connection) -> int:
    """Give rows without a ``name_key`` or ``look_key`` theirs where no other row holds
    it; returns how many were filled. Idempotent, and cheap once done (only older
    look-alikes stay NULL)."""
    filled = 0
    for table in TABLES:
        for column, key_of in KEYS:
            dialect.begin(conn, write=True)
            cursor = conn.cursor()
            try:
                sql = Sql(cursor, dialect)
                filled += _backfill(sql, table, column, key_of)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                cursor.close()
    return filled


def _backfill(sql: Sql, table: str, column: str, key_of: Callable[[str], Any]) -> int:
    rows = sql.all(f"SELECT id, name FROM {table} WHERE {column} IS NULL ORDER BY id")
    if not rows:
        return 0
    wanted: list[tuple[int, Any]] = [(int(row[0]), key_of(text(row[1]))) for row in rows]
    taken: set[Any] = set()
    keys = sorted({key for _, key in wanted})
    for start in range(0, len(keys), BACKFILL_CHUNK):
        chunk = keys[start : start + BACKFILL_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        taken.update(
            _same_type(row[0], chunk[0])
            for row in sql.all(f"SELECT {column} FROM {table} WHERE {column} IN ({marks})", chunk)
        )
    updates: list[Sequence[Any]] = []
    for row_id, key in wanted:  # ascending ids: the oldest name of a look-alike set wins
        if key not in taken:
            taken.add(key)
            updates.append((key, row_id))
    filled = 0
    for start in range(0, len(updates), BACKFILL_CHUNK):
        chunk_updates = updates[start : start + BACKFILL_CHUNK]
        try:
            sql.many(f"UPDATE {table} SET {column} = ? WHERE id = ?", chunk_updates)
            filled += len(chunk_updates)
        except Exception as exc:
            if not sql.dialect.is_integrity_error(exc):
                raise
            # A node registered a look-alike meanwhile (or another node is filling the
            # same rows): one row at a time, and a row whose key was taken stays NULL.
            for key, row_id in chunk_updates:
                try:
                    sql.execute(f"UPDATE {table} SET {column} = ? WHERE id = ?", (key, row_id))
                    filled += 1
                except Exception as row_exc:
                    if not sql.dialect.is_integrity_error(row_exc):
                        raise
    return filled


def _same_type(value: Any, like: Any) -> Any:
    """A key read back from the database, as the type the key function makes."""
    if isinstance(like, bytes):
        return bytes(value)
    return text(value)
