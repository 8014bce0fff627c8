"""The database a node uses, parsed once from ``--database``.

``urlsplit`` cannot read a URL with several hosts (``h1:3306,h2:3306`` is not a
port), and a Galera cluster is reached through several: the hosts are tried in
order, as libpq and the MySQL connectors do. So the URL is read here, once, into a
value that names each part; what the rest of the store gets is that value, never
the text. Errors name the part that is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import attrs

MYSQL_PORT = 3306
_DB_NAME = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
_MYSQL_SCHEMES = ("mysql", "mariadb", "mysql+pymysql")


@attrs.frozen
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class SqliteConfig:
    path: Path

    def describe(self) -> str:
        return f"sqlite {self.path}"


@attrs.frozen
class MysqlConfig:
    """A MariaDB/MySQL database on one server or on a cluster's servers (``hosts``, in
    the order they are tried)."""

    hosts: tuple[HostPort, ...]
    user: str
    password: str = attrs.field(repr=False)
    database: str

    def describe(self) -> str:
        hosts = ",".join(map(str, self.hosts))
        return f"mysql {self.user}@{hosts}/{self.database}"

    def with_database(self, database: str) -> MysqlConfig:
        return attrs.evolve(self, database=check_database_name(database))


DatabaseConfig = SqliteConfig | MysqlConfig


def check_database_name(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"database name {name!r}: use letters, digits, _ and $ only (1-64)")
    return name


def parse_host_port(text: str, default_port: int, what: str) -> HostPort:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; ``what`` names the URL in errors."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"{what}: the host {text!r} opens a [ without closing it")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{what}: after the host [{host}] comes :PORT, not {rest!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise ValueError(f"{what}: the host {text!r}: write an IPv6 address as [addr]:port")
        if not host:
            raise ValueError(f"{what}: the host {text!r} has no name before its port")
    if not port_text and text.endswith(":"):
        raise ValueError(f"{what}: the host {text!r} ends with : but no port")
    if not port_text:
        return HostPort(host, default_port)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{what}: the port {port_text!r} of host {host!r} is not 1-65535")
    return HostPort(host, int(port_text))


def parse_hosts(text: str, default_port: int, what: str) -> tuple[HostPort, ...]:
    """A comma-separated list of hosts (at least one, none repeated)."""
    if not text:
        raise ValueError(f"{what}: no host")
    hosts: list[HostPort] = []
    for part in text.split(","):
        if not part:
            raise ValueError(f"{what}: an empty host in the list {text!r}")
        host = parse_host_port(part, default_port, what)
        if host in hosts:
            raise ValueError(f"{what}: the host {host} is listed twice")
        hosts.append(host)
    return tuple(hosts)


def split_userinfo(authority: str) -> tuple[str | None, str | None, str]:
    """``user[:password]@hosts`` -> (user, password, hosts), each part unquoted."""
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        return None, None, authority
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None, hosts


def parse_database_url(url: str) -> DatabaseConfig:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
    ``mysql://user[:password]@host[:port][,host[:port]...]/database``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url!r}: the database URL must start with sqlite:// or mysql://")
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"{url!r}: write sqlite:///relative/path.db or sqlite:////abs/path.db")
        return SqliteConfig(Path(rest[1:]))
    if scheme not in _MYSQL_SCHEMES:
        raise ValueError(
            f"{url!r}: the scheme {scheme!r} is not one of sqlite, {', '.join(_MYSQL_SCHEMES)}"
        )
    what = f"database URL {_masked(url)!r}"
    authority, slash, path = rest.partition("/")
    if "?" in path or "#" in path or "?" in authority:
        raise ValueError(f"{what}: no options (?...) are understood here")
    user, password, hosts = split_userinfo(authority)
    database = unquote(path)
    if not slash or not database:
        raise ValueError(f"{what}: the URL must name a database, as in mysql://root@host/chat")
    if "/" in database:
        raise ValueError(f"{what}: the database {database!r} is one name, without /")
    try:
        check_database_name(database)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return MysqlConfig(
        hosts=parse_hosts(hosts, MYSQL_PORT, what) if hosts else (HostPort("127.0.0.1", 3306),),
        user=user or "root",
        password=password or "",
        database=database,
    )


def _masked(url: str) -> str:
    """The URL with its password, if any, replaced by ``***`` (for error messages)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
