"""What every query of the store uses: the cursor wrapper, ids, the clock."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .dialect import Cursor, Dialect


class Sql:
    """A cursor that speaks the repository's ``?`` placeholders on every dialect."""

    def __init__(self, cursor: Cursor, dialect: Dialect) -> None:
        self._cursor = cursor
        self.dialect = dialect

    def execute(self, query: str, args: Sequence[Any] = ()) -> None:
        self._cursor.execute(self.dialect.sql(query), tuple(args))

    def many(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(self.dialect.sql(query), [tuple(row) for row in rows])

    def insert(self, query: str, args: Sequence[Any]) -> int:
        self.execute(query, args)
        return int(self._cursor.lastrowid)

    def one(self, query: str, args: Sequence[Any] = ()) -> Any:
        self.execute(query, args)
        return self._cursor.fetchone()

    def all(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        self.execute(query, args)
        return list(self._cursor.fetchall())


MAX_ROW_ID = 2**63 - 1
"""Ids are BIGINT: a larger id names no row (and would not fit a query parameter)."""


def no_row(row_id: int) -> bool:
    return not 0 < row_id <= MAX_ROW_ID


def now_ms() -> int:
    return time.time_ns() // 1_000_000
