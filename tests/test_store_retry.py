"""Retryable database failures are retried inside the store (``chat.store.retry``).

The policy is pure and tested on its own; the pool's retries are tested on real
MariaDB: a deadlock provoked between the store's connection and a second real
connection locking two rows in the opposite order, and connections killed by the
server under an idle pool.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pymysql
import pytest
import trio

from chat.client import ChatError
from chat.store import Store, StoreUnavailable, dialect_for, open_store
from chat.store.dialect import Connection
from chat.store.mysql import MysqlDialect
from chat.store.retry import Failure, RetryPolicy, classify
from chat.store.throttle import Window

from .support import _mysql_admin, client, running_node

# --- the policy (pure) -----------------------------------------------------------------


def policy(value: float = 0.999) -> RetryPolicy:
    return RetryPolicy(attempts=5, first_delay=0.01, max_delay=0.05, uniform=lambda: value)


def test_busy_work_waits_a_jittered_growing_while_then_gives_up() -> None:
    waits = [
        policy().next_delay(Failure.BUSY, n, idempotent=False, time_left=None) for n in (1, 2, 3, 4)
    ]
    assert waits == pytest.approx([0.00999, 0.01998, 0.03996, 0.04995])
    assert policy().next_delay(Failure.BUSY, 5, idempotent=False, time_left=None) is None
    # The wait is a random part of the cap: two deadlocked transactions part ways.
    assert policy(0.0).next_delay(Failure.BUSY, 3, idempotent=False, time_left=None) == 0.0
    assert policy(0.5).delay(3) == pytest.approx(0.02)


def test_a_lost_connection_is_retried_for_reads_only_and_at_once() -> None:
    assert policy().next_delay(Failure.LOST, 1, idempotent=True, time_left=None) == 0.0
    assert policy().next_delay(Failure.LOST, 1, idempotent=False, time_left=None) is None
    assert policy().next_delay(Failure.LOST, 5, idempotent=True, time_left=None) is None


def test_no_retry_of_other_failures_or_after_the_deadline() -> None:
    assert policy().next_delay(Failure.OTHER, 1, idempotent=True, time_left=None) is None
    # The wait would end after the caller's deadline: the caller hears now.
    assert policy().next_delay(Failure.BUSY, 1, idempotent=False, time_left=0.005) is None
    assert policy().next_delay(Failure.BUSY, 1, idempotent=False, time_left=0.5) is not None
    assert policy().next_delay(Failure.LOST, 1, idempotent=True, time_left=0.0) is None


def test_mysql_errors_are_classified_by_number() -> None:
    dialect = dialect_for("mysql://u@h:1/d")
    assert isinstance(dialect, MysqlDialect)
    deadlock = pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
    lock_wait = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
    gone = pymysql.err.OperationalError(2013, "Lost connection to server during query")
    closed = pymysql.err.InterfaceError(0, "")
    duplicate = pymysql.err.IntegrityError(1062, "Duplicate entry")
    assert classify(dialect, deadlock) is Failure.BUSY
    assert classify(dialect, lock_wait) is Failure.BUSY
    assert classify(dialect, gone) is Failure.LOST
    assert classify(dialect, closed) is Failure.LOST
    assert classify(dialect, duplicate) is Failure.OTHER


# --- the pool on real MariaDB ---------------------------------------------------------------


@pytest.fixture
async def store(mysql_url: str) -> AsyncIterator[Store]:
    opened = await trio.to_thread.run_sync(open_store, mysql_url)
    opened.pool.timeout = 10.0
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def admin() -> Iterator[Any]:
    conn = _mysql_admin()
    try:
        yield conn
    finally:
        conn.close()


def _database(store: Store) -> str:
    assert isinstance(store.dialect, MysqlDialect)
    return store.dialect.database


def _outsider(store: Store) -> Any:
    """A second real connection to the test's database, outside the store's pool."""
    dialect = store.dialect
    assert isinstance(dialect, MysqlDialect)
    return pymysql.connect(
        host=dialect.host,
        port=dialect.port,
        user=dialect.user,
        password=dialect.password,
        database=dialect.database,
        autocommit=True,
        # As the store's: a range update then skips rows it does not change, whatever
        # plan it gets, instead of waiting for their locks (REPEATABLE READ would).
        init_command="SET SESSION tx_isolation = 'READ-COMMITTED'",
    )


def _wait_for_lock_wait(admin: Any, database: str, timeout: float = 5.0) -> None:
    """Until a connection of ``database`` runs the outsider's update of row 1 (which
    waits for the store's lock on it). The process list, not INNODB_TRX: MariaDB
    10.11 showed the waiting transaction there as RUNNING for seconds."""
    deadline = time.monotonic() + timeout
    with admin.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                " WHERE DB = %s AND INFO LIKE 'UPDATE rows_to_lock SET v = v + 100 WHERE id = 1%%'",
                (database,),
            )
            if cursor.fetchone()[0]:
                time.sleep(0.1)  # it has asked for the lock by now (either way the store's
                return  # transaction, the lighter one, is the deadlock's victim)
            time.sleep(0.01)
    raise AssertionError("the outsider never waited for the lock")


async def test_a_deadlock_is_retried_and_the_call_succeeds(store: Store, admin: Any) -> None:
    """The store's transaction locks row 1 then row 2; a second connection has locked
    rows 2..50 and waits for row 1: a deadlock, whose victim is the lighter transaction,
    the store's (1213). Its retry waits for the other to commit, then succeeds."""
    await store.pool.run(
        lambda conn: _execute(
            conn,
            "CREATE TABLE rows_to_lock (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB",
            "INSERT INTO rows_to_lock SELECT seq, 0 FROM seq_1_to_50",
        )
    )
    store_locked, outsider_locked = threading.Event(), threading.Event()
    attempts: list[int] = []

    def work(conn: Connection) -> int:
        attempts.append(len(attempts) + 1)
        cursor = conn.cursor()
        try:
            cursor.execute("START TRANSACTION")
            cursor.execute("UPDATE rows_to_lock SET v = v + 1 WHERE id = 1")
            if len(attempts) == 1:
                store_locked.set()
                assert outsider_locked.wait(10)
                _wait_for_lock_wait(admin, _database(store))
            cursor.execute("UPDATE rows_to_lock SET v = v + 10 WHERE id = 2")
            cursor.execute("SELECT v FROM rows_to_lock WHERE id = 2")
            value = int(cursor.fetchone()[0])
            conn.commit()
            return value
        except BaseException:
            conn.rollback()
            raise
        finally:
            cursor.close()

    def outsider() -> None:
        conn = _outsider(store)
        try:
            with conn.cursor() as cursor:
                assert store_locked.wait(10)
                cursor.execute("START TRANSACTION")
                cursor.execute("UPDATE rows_to_lock SET v = v + 100 WHERE id >= 2")
                outsider_locked.set()
                cursor.execute("UPDATE rows_to_lock SET v = v + 100 WHERE id = 1")
                conn.commit()
        finally:
            conn.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, outsider)
        value = await store.pool.run(work)
    assert attempts == [1, 2]
    assert (store.pool.retries, store.pool.gave_up) == (1, 0)
    # The retry ran after the other transaction committed: both changes are in.
    assert value == 110
    rows = await store.pool.run(
        lambda conn: _query(conn, "SELECT id, v FROM rows_to_lock WHERE id <= 3")
    )
    assert rows == [(1, 101), (2, 110), (3, 100)]


async def test_a_read_whose_connection_was_killed_runs_again(store: Store, admin: Any) -> None:
    alice = await store.create_user("alice", "not-a-hash")  # leaves connections idle in the pool
    _kill_connections(admin, _database(store))
    assert await store.user_by_name("alice") == alice
    assert store.pool.retries >= 1


async def test_a_write_whose_connection_was_killed_is_not_run_again(
    store: Store, admin: Any
) -> None:
    """It may have committed before its answer was lost: ``unavailable``, not twice."""
    await store.create_user("alice", "not-a-hash")
    _kill_connections(admin, _database(store))
    retries = store.pool.retries
    with pytest.raises(StoreUnavailable, match="connection lost"):
        await store.create_user("bob", "not-a-hash")
    assert store.pool.retries == retries
    await store.create_user("bob", "not-a-hash")  # on a fresh connection


def _kill_connections(admin: Any, database: str) -> None:
    with admin.cursor() as cursor:
        cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (database,))
        ids = [row[0] for row in cursor.fetchall()]
        assert ids, "the pool should hold idle connections"
        for thread_id in ids:
            cursor.execute(f"KILL CONNECTION {int(thread_id)}")


def _execute(conn: Connection, *statements: str) -> None:
    cursor = conn.cursor()
    try:
        for statement in statements:
            cursor.execute(statement)
    finally:
        cursor.close()


def _query(conn: Connection, statement: str) -> list[tuple[int, ...]]:
    cursor = conn.cursor()
    try:
        cursor.execute(statement)
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


# --- churn on MariaDB: nothing retryable reaches a client ------------------------------------


def _cheap_hash(password: str) -> str:
    """A valid scrypt hash with tiny parameters: churn tests log in hundreds of times."""
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(password.encode(), salt=salt, n=2, r=1, p=1, dklen=32)
    return f"scrypt$2$1$1${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


async def test_a_join_wave_on_one_group_gets_no_unavailable(store: Store) -> None:
    """Many joins of one group at once: each locks the group row first, so they queue
    instead of deadlocking (before: the member row's foreign key and the count update
    took the group row's locks in two steps)."""
    creator = await store.create_user("creator", "not-a-hash")
    group = await store.create_group("wave", "", creator.id)
    joiners = [await store.create_user(f"joiner{i}", "not-a-hash") for i in range(120)]
    failures: list[Exception] = []

    async def join(user_id: int) -> None:
        try:
            await store.join_group(group.id, user_id)
        except Exception as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for joiner in joiners:
            nursery.start_soon(join, joiner.id)
    assert failures == []
    assert store.pool.gave_up == 0
    members = await store.group_members(creator.id, group.id, 0, 500)
    assert len(members.items) == 121


async def test_login_logout_churn_on_mariadb_gets_no_unavailable(mysql_url: str) -> None:
    """Users logging in and out at once, several devices each, on one MariaDB node:
    the throttle rows, device rows and leases they share meet in the database, and a
    deadlock or lock wait among them is retried, never answered."""
    users, cycles = 40, 4
    store = await trio.to_thread.run_sync(open_store, mysql_url)
    for i in range(users):
        await store.create_user(f"churn{i}", _cheap_hash("pw"))
    answers: list[str] = []
    async with running_node(store, address_logins_per_minute=100_000) as node:

        async def churn(i: int) -> None:
            for cycle in range(cycles):
                async with client(node) as c:
                    try:
                        await c.call(
                            "login", name=f"churn{i}", password="pw", device=f"d{cycle % 2}"
                        )
                        await c.call("send", to=store_ids[(i + 1) % users], text=f"{i}/{cycle}")
                        answers.append("ok")
                    except ChatError as exc:
                        answers.append(str(exc))

        store_ids = [(await store.user_by_name(f"churn{i}")).id for i in range(users)]  # type: ignore[union-attr]
        async with trio.open_nursery() as nursery:
            for i in range(users):
                nursery.start_soon(churn, i)
    store.close()
    assert answers == ["ok"] * (users * cycles), [a for a in answers if a != "ok"][:5]
    assert store.pool.gave_up == 0


async def test_password_throttle_reservations_do_not_deadlock(store: Store) -> None:
    """Logins of one account at once reserve and forget events of the same buckets:
    every delete of ``rate_events`` locks by id, in id order, so they queue instead of
    deadlocking (a delete by bucket and time locked rows in scan order, against
    ``forget``'s primary key order: 1213 under login churn)."""
    window = Window(limit=1_000_000, span_ms=1)  # every earlier event is pruned each time

    async def login(index: int) -> None:
        for _ in range(5):
            reservation = await store.throttle_reserve(
                ["login:name:churn", f"login:address:{index % 3}"], window
            )
            await store.throttle_forget(reservation.ids)

    async with trio.open_nursery() as nursery:
        for index in range(30):
            nursery.start_soon(login, index)
    assert (store.pool.retries, store.pool.gave_up) == (0, 0)
