"""What differs between the databases the store runs on.

The repository (``chat.store.repository``) writes each query once, with ``?``
placeholders; a ``Dialect`` knows how to connect, how to begin a transaction,
how to spell a placeholder and which driver errors mean "retry",
"constraint violated" or "the database is gone".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    lastrowid: Any
    rowcount: int

    def execute(self, query: str, args: Sequence[Any] = ..., /) -> Any: ...
    def executemany(self, query: str, args: Sequence[Sequence[Any]], /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> Any: ...
    def close(self) -> Any: ...


class Connection(Protocol):
    """The part of a DB-API connection the store uses."""

    def cursor(self) -> Any: ...
    def commit(self) -> Any: ...
    def rollback(self) -> Any: ...
    def close(self) -> Any: ...


class Dialect(ABC):
    name: str
    """Also the folder under ``migrations/`` that holds this dialect's SQL files."""
    pool_size: int
    insert_returning = False
    """``INSERT ... RETURNING`` works: many rows go in with one statement and their ids
    come back (SQLite 3.35+, MariaDB 10.5+; not MySQL)."""
    reads_in_transaction = True
    """Reads run in a transaction of their own. False where each statement of a read
    sees the latest commits anyway (MySQL's READ COMMITTED with autocommit): then a
    read is its statements alone, without the round trips of BEGIN and COMMIT."""
    for_update = ""
    greatest = "GREATEST"
    """The SQL function of the larger of two values (SQLite's is the two-argument MAX)."""
    """Appended to a SELECT that must lock its rows until the transaction ends. Empty on
    SQLite, whose write transactions (``BEGIN IMMEDIATE``) hold the whole database."""

    @abstractmethod
    def connect(self) -> Connection:
        """Open one connection (called in a worker thread)."""

    @abstractmethod
    def begin(self, conn: Connection, *, write: bool) -> None:
        """Start a transaction; ``write`` ones may take locks up front."""

    @abstractmethod
    def is_integrity_error(self, exc: BaseException) -> bool:
        """A unique or foreign-key constraint refused the statement."""

    @abstractmethod
    def is_retryable(self, exc: BaseException) -> bool:
        """A deadlock or lock timeout: the whole transaction may simply run again."""

    @abstractmethod
    def is_disconnect(self, exc: BaseException) -> bool:
        """The connection is unusable: drop it and report the store unavailable."""

    def is_current(self, conn: Connection) -> bool:
        """False for a connection to a server the store has moved away from (one of
        several hosts): the pool closes it instead of using it."""
        return True

    def connection_lost(self, conn: Connection) -> None:
        """A connection broke (``is_disconnect``): with several hosts, move on."""

    def keep_greatest(self, keys: str, column: str) -> str:
        """What follows an ``INSERT ... VALUES`` so that a row whose ``keys`` exist
        already keeps the greater of its ``column`` and the new one (MariaDB/MySQL
        spelling; SQLite's is its own)."""
        return f" ON DUPLICATE KEY UPDATE {column} = GREATEST({column}, VALUES({column}))"

    def check_alive(self, conn: Connection) -> None:
        """Called on a connection idle for a while, before it is used again."""

    def prepare_database(self) -> None:
        """Create the database itself when the server may do so (MySQL)."""

    def sql(self, query: str) -> str:
        """The query with this driver's placeholders."""
        return query

    @abstractmethod
    def apply_migration(
        self, conn: Connection, statements: list[str], record: tuple[int, str]
    ) -> bool:
        """Apply one migration unless already recorded; True when this call applied it."""

    @abstractmethod
    def migration_lock(self, conn: Connection, acquire: bool) -> None:
        """Take or release the lock that keeps two nodes from migrating at once."""

    def describe(self) -> str:
        return self.name


def migrations_root() -> Path:
    """Where the SQL files are: the repository's ``migrations/`` or the wheel's copy."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no migrations/ folder next to the chat package")
