"""MySQL/MariaDB through PyMySQL: the database of a cluster.

Several hosts (a Galera cluster) are tried in order, as libpq and the MySQL
connectors do, and the node writes to one of them at a time: the first that
answers and is ready (a Galera member outside the primary component says
``wsrep_ready`` OFF and refuses statements). When a connection to it is lost, the
node moves on to the next host and stays there: a host that comes back is used
again at the next failover or restart, never failed back to (a fail-back would be a
second interruption). Writing to one member at a time keeps Galera's certification
conflicts (which arrive as deadlocks, errno 1213, and are retried as such) to the
rare moments of a switch, and ``message_id`` order as one server gives it.
"""

from __future__ import annotations

import logging
import re
import threading

import pymysql
import pymysql.err

from .config import HostPort, MysqlConfig, check_database_name
from .dialect import Connection, Dialect

log = logging.getLogger(__name__)

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
_MARIADB_VERSION = re.compile(r"(\d+)\.(\d+)\.\d+-MariaDB")


class MysqlDialect(Dialect):
    name = "mysql"
    pool_size = 8
    for_update = " FOR UPDATE"

    def __init__(self, config: MysqlConfig) -> None:
        self.config = config
        self.user, self.password = config.user, config.password
        self.database = check_database_name(config.database)
        self.hosts = config.hosts
        self._current = 0
        """Index in ``hosts`` of the one written to now."""
        self._lock = threading.Lock()
        self.lock_wait_seconds = LOCK_WAIT_SECONDS

    @property
    def host(self) -> str:
        return self.hosts[self._current].host

    @property
    def port(self) -> int:
        return self.hosts[self._current].port

    def _connect(
        self, database: str | None
    ) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        """A connection to the current host, or else to the next one that answers and
        is ready, which becomes the current one."""
        start = self._current
        errors: list[str] = []
        for offset in range(len(self.hosts)):
            index = (start + offset) % len(self.hosts)
            address = self.hosts[index]
            try:
                conn = self._connect_to(address, database)
            except pymysql.err.MySQLError as exc:
                if len(self.hosts) == 1:
                    raise
                errors.append(f"{address}: {exc}")
                continue
            if len(self.hosts) > 1 and not self._ready(conn):
                self._close_quietly(conn)
                errors.append(f"{address}: not ready (wsrep_ready is OFF)")
                continue
            with self._lock:
                if index != self._current:
                    log.warning(
                        "database host %s: now writing to %s (%s)",
                        self.hosts[self._current],
                        address,
                        "; ".join(errors) or "the previous host failed",
                    )
                    self._current = index
            return conn
        raise pymysql.err.OperationalError(2003, "no database host answers: " + "; ".join(errors))

    @staticmethod
    def _ready(conn: pymysql.connections.Connection[pymysql.cursors.Cursor]) -> bool:
        """False for a Galera member that may not take statements now (not in the
        primary component, or not synced); True for a server without Galera."""
        try:
            with conn.cursor() as cursor:
                # A MariaDB built with Galera but running without it says wsrep_ready OFF.
                cursor.execute("SHOW VARIABLES LIKE 'wsrep_on'")
                row = cursor.fetchone()
                if row is None or str(row[1]).upper() != "ON":
                    return True
                cursor.execute("SHOW STATUS LIKE 'wsrep_ready'")
                row = cursor.fetchone()
        except pymysql.err.MySQLError:
            return False
        return row is not None and str(row[1]).upper() == "ON"

    @staticmethod
    def _close_quietly(conn: pymysql.connections.Connection[pymysql.cursors.Cursor]) -> None:
        try:
            conn.close()
        except Exception:
            log.debug("closing a connection failed", exc_info=True)

    def is_current(self, conn: Connection) -> bool:
        """A connection to a host the node has moved away from is not used again."""
        if len(self.hosts) == 1:
            return True
        return (getattr(conn, "host", None), getattr(conn, "port", None)) == (
            self.host,
            self.port,
        )

    def connection_lost(self, conn: Connection) -> None:
        """Move on from the current host when a connection to it broke: the next
        connection tries the hosts after it first."""
        if len(self.hosts) == 1:
            return
        lost = HostPort(str(getattr(conn, "host", "")), int(getattr(conn, "port", 0)))
        with self._lock:
            if lost == self.hosts[self._current]:
                self._current = (self._current + 1) % len(self.hosts)
                log.warning(
                    "lost a connection to database host %s: trying %s next",
                    lost,
                    self.hosts[self._current],
                )

    def _connect_to(
        self, address: HostPort, database: str | None
    ) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        return pymysql.connect(
            host=address.host,
            port=address.port,
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
        if len(self.hosts) == 1:
            return f"mysql {self.user}@{self.hosts[0]}/{self.database}"
        return f"{self.config.describe()} (writing to {self.hosts[self._current]})"
