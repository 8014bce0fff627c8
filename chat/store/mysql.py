"""MySQL/MariaDB through PyMySQL: the database of a cluster."""

from __future__ import annotations

import re

import pymysql
import pymysql.err

from .dialect import Connection, Dialect

CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 30
MIGRATION_LOCK_SECONDS = 120
LOCK_WAIT_SECONDS = 2
"""How long a statement waits for a row lock before failing with 1205 (and being retried)."""
_DEADLOCK, _LOCK_WAIT_TIMEOUT, _RECORD_CHANGED = 1213, 1205, 1020
_RETRYABLE = frozenset({_DEADLOCK, _LOCK_WAIT_TIMEOUT, _RECORD_CHANGED})
"""Errors after which the whole transaction may run again (``chat.store.retry``): a
deadlock, also a Galera certification conflict (reported as 1213); a lock wait timeout;
MariaDB's "record has changed since last read" (1020, with snapshot isolation)."""
_DB_NAME = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
_MARIADB_VERSION = re.compile(r"(\d+)\.(\d+)\.\d+-MariaDB")


class MysqlDialect(Dialect):
    name = "mysql"
    pool_size = 8
    for_update = " FOR UPDATE"

    def __init__(self, *, host: str, port: int, user: str, password: str, database: str) -> None:
        if not _DB_NAME.match(database):
            raise ValueError(f"database name {database!r}: use letters, digits, _ and $ only")
        self.host, self.port, self.user, self.password = host, port, user, password
        self.database = database
        self.lock_wait_seconds = LOCK_WAIT_SECONDS

    def _connect(
        self, database: str | None
    ) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            charset="utf8mb4",
            # Writes begin their transaction explicitly; a read is its statements alone
            # (``reads_in_transaction``), each seeing the latest commits (READ COMMITTED).
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            write_timeout=READ_TIMEOUT_SECONDS,
            # READ COMMITTED: no gap locks, so concurrent sends to one user do not deadlock.
            # A short lock wait: our transactions hold locks for milliseconds, so a wait
            # of seconds is a stuck holder; 1205 then comes back while there is still
            # time to retry (``chat.store.retry``) instead of outlasting --db-timeout.
            init_command=(
                "SET SESSION tx_isolation = 'READ-COMMITTED',"
                f" SESSION innodb_lock_wait_timeout = {self.lock_wait_seconds}"
            ),
        )

    def connect(self) -> Connection:
        return self._connect(self.database)

    def prepare_database(self) -> None:
        """Create the database if needed, and learn what the server can do. Runs once,
        before the pool exists: pooled connections, made in worker threads, change
        nothing shared."""
        conn = self._connect(None)
        # MariaDB 10.5+ has INSERT ... RETURNING, MySQL has not: ask the server.
        version = _MARIADB_VERSION.search(str(getattr(conn, "server_version", "")))
        release = (int(version[1]), int(version[2])) if version else (0, 0)
        self.insert_returning = release >= (10, 5)
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{self.database}`"
                    " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
        finally:
            conn.close()

    reads_in_transaction = False

    def begin(self, conn: Connection, *, write: bool) -> None:
        conn.cursor().execute("START TRANSACTION")

    def sql(self, query: str) -> str:
        return query.replace("?", "%s")

    def is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, pymysql.err.IntegrityError)

    def is_retryable(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, pymysql.err.OperationalError | pymysql.err.InternalError)
            and bool(exc.args)
            and exc.args[0] in _RETRYABLE
        )

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.err.InterfaceError):
            return True
        return isinstance(exc, pymysql.err.OperationalError) and not self.is_retryable(exc)

    def check_alive(self, conn: Connection) -> None:
        assert isinstance(conn, pymysql.connections.Connection)
        conn.ping(reconnect=False)

    def migration_lock(self, conn: Connection, acquire: bool) -> None:
        cursor = conn.cursor()
        if acquire:
            cursor.execute("SELECT GET_LOCK('chat_migrations', %s)", (MIGRATION_LOCK_SECONDS,))
            row = cursor.fetchone()
            if not row or row[0] != 1:
                raise TimeoutError("another node has held the migration lock too long")
        else:
            cursor.execute("SELECT RELEASE_LOCK('chat_migrations')")
            cursor.fetchone()

    def apply_migration(
        self, conn: Connection, statements: list[str], record: tuple[int, str]
    ) -> bool:
        # MySQL commits DDL implicitly, so a migration is not atomic here; the named
        # lock taken around all migrations is what keeps two nodes from applying one twice.
        cursor = conn.cursor()
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY,"
            " name VARCHAR(255) NOT NULL, applied_at BIGINT NOT NULL)"
        )
        cursor.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (record[0],))
        if cursor.fetchone():
            conn.rollback()
            return False
        cursor.execute("START TRANSACTION")
        try:
            for statement in statements:
                cursor.execute(statement)
            cursor.execute(
                "INSERT INTO schema_migrations (version, name, applied_at)"
                " VALUES (%s, %s, UNIX_TIMESTAMP() * 1000)",
                record,
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return True

    def describe(self) -> str:
        return f"mysql {self.user}@{self.host}:{self.port}/{self.database}"
