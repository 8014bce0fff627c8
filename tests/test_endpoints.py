"""The endpoint parsers: ``--database`` (one host or several, tried in order) and
``--redis`` (one server or a master found through Sentinels). Pure: no server."""

from __future__ import annotations

from pathlib import Path

import attrs
import pymysql
import pytest
from redis.sentinel import SentinelConnectionPool

from chat.broker.endpoint import RedisEndpoint, SentinelAddress
from chat.broker.redis import RedisBroker
from chat.store import HostPort, MysqlConfig, SqliteConfig, dialect_for, parse_database_url
from chat.store.mysql import MysqlDialect

from .support import MYSQL_URL, free_port

# --- the database -----------------------------------------------------------------


def test_one_mysql_host() -> None:
    config = parse_database_url("mysql://chat:s%40cret@db.example:3307/chat")
    assert config == MysqlConfig((HostPort("db.example", 3307),), "chat", "s@cret", "chat")
    assert "s@cret" not in repr(config)


def test_several_mysql_hosts_keep_their_order_and_default_port() -> None:
    config = parse_database_url("mysql://root@h1:3316,h2,[::1]:3318/chat")
    assert isinstance(config, MysqlConfig)
    assert config.hosts == (HostPort("h1", 3316), HostPort("h2", 3306), HostPort("::1", 3318))
    assert config.describe() == "mysql root@h1:3316,h2:3306,[::1]:3318/chat"


def test_defaults_of_a_mysql_url() -> None:
    assert parse_database_url("mariadb:///chat") == MysqlConfig(
        (HostPort("127.0.0.1", 3306),), "root", "", "chat"
    )


def test_sqlite_paths() -> None:
    assert parse_database_url("sqlite:///chat.db") == SqliteConfig(Path("chat.db"))
    assert parse_database_url("sqlite:////var/chat.db") == SqliteConfig(Path("/var/chat.db"))


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("postgres://h/chat", "'postgres'"),
        ("chat.db", "must start with"),
        ("sqlite://chat.db", "sqlite:///"),
        ("mysql://root@h1", "must name a database"),
        ("mysql://root@h1/", "must name a database"),
        ("mysql://root@h1/a-b", "'a-b'"),
        ("mysql://root@h1/a/b", "one name"),
        ("mysql://root@h1:33x6/chat", "'33x6'"),
        ("mysql://root@h1:70000/chat", "'70000'"),
        ("mysql://root@h1,,h2/chat", "empty host"),
        ("mysql://root@h1,h1:3306/chat", "h1:3306 is listed twice"),
        ("mysql://root@h1:/chat", "no port"),
        ("mysql://root@:3306/chat", "no name before its port"),
        ("mysql://root@[::1/chat", "opens a ["),
        ("mysql://root@::1/chat", "IPv6"),
        ("mysql://root@h1/chat?ssl=1", "no options"),
    ],
)
def test_bad_database_urls_name_their_bad_part(url: str, names: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        parse_database_url(url)
    assert names in str(raised.value)


def test_a_password_never_shows_in_an_error() -> None:
    with pytest.raises(ValueError) as raised:
        parse_database_url("mysql://root:hunter2@h1:x/chat")
    assert "hunter2" not in str(raised.value)
    assert "***" in str(raised.value)


def test_the_dialect_writes_to_the_first_host_and_describes_all() -> None:
    dialect = dialect_for("mysql://root@127.0.0.1:3316,127.0.0.1:3317/chat")
    assert isinstance(dialect, MysqlDialect)
    assert (dialect.host, dialect.port) == ("127.0.0.1", 3316)
    assert "127.0.0.1:3316,127.0.0.1:3317" in dialect.describe()


# --- Redis --------------------------------------------------------------------------


def test_a_plain_redis_url() -> None:
    endpoint = RedisEndpoint.parse("redis://:pw@127.0.0.1:6380/3")
    assert not endpoint.is_sentinel
    assert endpoint.db == 3
    assert "pw" not in str(endpoint) and "pw" not in repr(endpoint)
    pool = endpoint.pool(max_connections=2)
    assert pool.connection_kwargs["port"] == 6380
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["db"] == 3


def test_a_sentinel_url() -> None:
    endpoint = RedisEndpoint.parse(
        "redis+sentinel://:master-pw@s1:26380,s2,[::1]:26381/chat-master/2"
        "?sentinel_password=sentinel-pw"
    )
    assert endpoint.is_sentinel
    assert endpoint.sentinels == (
        SentinelAddress("s1", 26380),
        SentinelAddress("s2", 26379),
        SentinelAddress("::1", 26381),
    )
    assert (endpoint.master, endpoint.db) == ("chat-master", 2)
    assert (endpoint.password, endpoint.sentinel_password) == ("master-pw", "sentinel-pw")
    assert "master-pw" not in str(endpoint) and "sentinel-pw" not in str(endpoint)
    pool = endpoint.pool(max_connections=2, socket_timeout=1.0)
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "chat-master"
    assert pool.connection_kwargs["password"] == "master-pw"
    assert pool.connection_kwargs["db"] == 2
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel["password"] == "sentinel-pw"
    assert sentinel["socket_timeout"] == 1.0


def test_a_sentinel_url_without_db_is_database_0_and_prefix_chat_0() -> None:
    endpoint = RedisEndpoint.parse("redis+sentinel://127.0.0.1:26379/mymaster")
    assert endpoint.db == 0
    broker = RedisBroker(endpoint, "node-a")
    assert broker.prefix == "chat:0"
    assert RedisBroker("redis+sentinel://127.0.0.1/m/5", "node-a").prefix == "chat:5"


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("http://127.0.0.1:6379/0", "redis://"),
        ("redis://127.0.0.1:6379/x", "database 'x' is not a number"),
        ("redis+sentinel:///mymaster", "no Sentinel address"),
        ("redis+sentinel://s1:26379", "name the master"),
        ("redis+sentinel://s1:26379/", "name the master"),
        ("redis+sentinel://s1:x/m", "'x' of Sentinel 's1'"),
        ("redis+sentinel://s1,,s2/m", "empty Sentinel address"),
        ("redis+sentinel://s1,s1:26379/m", "s1:26379 is listed twice"),
        ("redis+sentinel://s1/m/zero", "'zero' is not a number"),
        ("redis+sentinel://s1/m/0/1", "at most /DB"),
        ("redis+sentinel://s1/my master", "master name"),
        ("redis+sentinel://s1/m?password=x", "'password' is not one of"),
    ],
)
def test_bad_redis_urls_name_their_bad_part(url: str, names: str) -> None:
    with pytest.raises(ValueError) as raised:
        RedisEndpoint.parse(url)
    assert names in str(raised.value)


# --- several database hosts, against the real MariaDB ------------------------------


def test_hosts_are_tried_in_order_and_the_store_stays_on_the_one_that_answers() -> None:
    """The first host refuses (nothing listens there): the dialect connects to the
    second and writes to it from then on; a lost connection moves it on (here, round
    to the first, which still refuses, so back to the second); a connection to a host
    it moved away from is not current any more."""
    real = parse_database_url(f"{MYSQL_URL}/mysql")
    assert isinstance(real, MysqlConfig)
    closed = HostPort("127.0.0.1", free_port())
    dialect = MysqlDialect(attrs.evolve(real, hosts=(closed, *real.hosts)))
    conn = dialect.connect()
    try:
        assert (dialect.host, dialect.port) == (real.hosts[0].host, real.hosts[0].port)
        assert dialect.is_current(conn)
        dialect.connection_lost(conn)
        assert (dialect.host, dialect.port) == (closed.host, closed.port)
        assert not dialect.is_current(conn)
        again = dialect.connect()
        again.close()
        assert (dialect.host, dialect.port) == (real.hosts[0].host, real.hosts[0].port)
    finally:
        conn.close()


def test_no_host_answering_names_each() -> None:
    first, second = HostPort("127.0.0.1", free_port()), HostPort("127.0.0.1", free_port())
    dialect = MysqlDialect(MysqlConfig((first, second), "root", "", "chat"))
    with pytest.raises(pymysql.err.OperationalError) as raised:
        dialect.connect()
    assert str(first) in str(raised.value) and str(second) in str(raised.value)
