"""The embedded default: one SQLite file, nothing to install or run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .dialect import Connection, Dialect

BUSY_TIMEOUT_SECONDS = 10.0


class SqliteDialect(Dialect):
    name = "sqlite"
    pool_size = 4
    insert_returning = sqlite3.sqlite_version_info >= (3, 35, 0)
    greatest = "MAX"

    def __init__(self, path: Path) -> None:
        self.path = path

    def connect(self) -> Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_SECONDS,
            isolation_level=None,  # transactions are begun explicitly
            check_same_thread=False,  # the pool hands a connection to one thread at a time
        )
        conn.execute("PRAGMA foreign_keys = ON")
        # WAL: readers never wait for the writer. NORMAL: a commit survives any crash of
        # this process (the WAL is written at commit); only an OS crash may lose the last ones.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def keep_greatest(self, keys: str, column: str) -> str:
        return f" ON CONFLICT ({keys}) DO UPDATE SET {column} = MAX({column}, excluded.{column})"

    def begin(self, conn: Connection, *, write: bool) -> None:
        # IMMEDIATE takes the write lock at once, so two writers never deadlock upgrading.
        conn.cursor().execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and (
            "unable to open" in str(exc) or "disk i/o" in str(exc).lower()
        )

    def migration_lock(self, conn: Connection, acquire: bool) -> None:
        """SQLite's EXCLUSIVE transaction in ``apply_migration`` is the lock."""

    def apply_migration(
        self, conn: Connection, statements: list[str], record: tuple[int, str]
    ) -> bool:
        cursor = conn.cursor()
        cursor.execute("BEGIN EXCLUSIVE")
        try:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            cursor.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (record[0],))
            if cursor.fetchone():
                conn.rollback()
                return False
            for statement in statements:
                cursor.execute(statement)
            cursor.execute(
                "INSERT INTO schema_migrations (version, name, applied_at)"
                " VALUES (?, ?, CAST(strftime('%s','now') AS INTEGER) * 1000)",
                record,
            )
            conn.commit()
            return True
        except BaseException:
            conn.rollback()
            raise

    def describe(self) -> str:
        return f"sqlite file {self.path}"
