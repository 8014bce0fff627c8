"""Where the cluster's Redis is, parsed once from ``--redis``.

Two kinds of endpoint:

- one server: ``redis://[user:password@]host:port/db`` (also ``rediss://`` and
  ``unix://``), read by redis-py's own URL parser;
- a master found through Sentinels, which follow it across a failover:
  ``redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]``
  ``[?sentinel_password=...&sentinel_username=...]``. The user info is the
  *master's* (and its replicas') credentials, as in a ``redis://`` URL; the
  Sentinels' own password, when they have one, is the query parameter
  ``sentinel_password`` (redis-py's ``sentinel_kwargs``). A Sentinel without a
  port is on 26379; without ``/DB`` the database is 0.

The broker asks the endpoint for connection pools (``pool``): it never reads the
URL itself. For a Sentinel endpoint each pool asks the Sentinels for the master's
address whenever it opens a connection, so after a failover new connections reach
the new master, and a connection to a master demoted to replica turns its
``READONLY`` answer into a connection error (redis-py's ``SentinelManagedConnection``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs
import redis
import redis.connection
from redis.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_PORT = 26379
SENTINEL_SCHEME = "redis+sentinel"
_SENTINEL_OPTIONS = frozenset({"sentinel_password", "sentinel_username"})
_MASTER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@attrs.frozen
class SentinelAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.frozen
class RedisEndpoint:
    """A parsed ``--redis``: a single server (``sentinels`` empty) or a Sentinel-managed
    master named ``master``. ``db`` is the database index either way (the default key
    prefix is ``chat:<db>``)."""

    description: str
    """The URL without its passwords: what logs and errors show."""
    db: int
    server_options: tuple[tuple[str, Any], ...] = attrs.field(default=(), repr=False)
    """redis-py's connection keywords for a single server (``parse_url``'s output)."""
    sentinels: tuple[SentinelAddress, ...] = ()
    master: str = ""
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = attrs.field(default=None, repr=False)

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def __str__(self) -> str:
        return self.description

    def pool(self, **options: Any) -> redis.ConnectionPool:
        """A new connection pool to the (current) master, with these redis-py
        connection keywords (timeouts, retries, ``max_connections``)."""
        if not self.is_sentinel:
            return redis.ConnectionPool(**(dict(self.server_options) | options))
        socket_options = {k: v for k, v in options.items() if k.startswith("socket_")}
        sentinel_kwargs: dict[str, Any] = dict(socket_options)
        if self.sentinel_password is not None:
            sentinel_kwargs["password"] = self.sentinel_password
        if self.sentinel_username is not None:
            sentinel_kwargs["username"] = self.sentinel_username
        manager = Sentinel(
            [(s.host, s.port) for s in self.sentinels], sentinel_kwargs=sentinel_kwargs
        )
        credentials: dict[str, Any] = {"db": self.db}
        if self.username is not None:
            credentials["username"] = self.username
        if self.password is not None:
            credentials["password"] = self.password
        pool: redis.ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            self.master, manager, is_master=True, **(credentials | options)
        )
        return pool

    @classmethod
    def parse(cls, url: str) -> RedisEndpoint:
        """Read ``--redis``; a ``ValueError`` names the part that is wrong."""
        scheme, sep, rest = url.partition("://")
        if sep and scheme == SENTINEL_SCHEME:
            return cls._parse_sentinel(url)
        try:
            # redis-py's own reading of redis://, rediss:// and unix:// URLs.
            options = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ValueError(
                f"Redis URL {_masked(url)!r}: {exc} (or {SENTINEL_SCHEME}://HOST:PORT/MASTER)"
            ) from None
        path = rest.partition("/")[2].partition("?")[0] if scheme != "unix" else ""
        if path and not path.isdigit():
            # redis-py would quietly use database 0.
            raise ValueError(f"Redis URL {_masked(url)!r}: the database {path!r} is not a number")
        db = int(options.get("db", 0) or 0)
        return cls(_masked(url), db, server_options=tuple(sorted(options.items())))

    @classmethod
    def _parse_sentinel(cls, url: str) -> RedisEndpoint:
        what = f"Redis URL {_masked(url)!r}"
        rest = url.partition("://")[2]
        rest, _, query = rest.partition("?")
        authority, slash, path = rest.partition("/")
        userinfo, at, hosts = authority.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels = _parse_sentinels(hosts, what)
        parts = path.split("/") if slash else []
        if not parts or not parts[0]:
            raise ValueError(f"{what}: name the master after the Sentinels, as in /mymaster")
        master = unquote(parts[0])
        if not set(master) <= _MASTER_NAME_CHARS:
            raise ValueError(f"{what}: the master name {master!r}: use letters, digits, - _ .")
        db = 0
        if len(parts) > 2 or (len(parts) == 2 and not parts[1]):
            raise ValueError(f"{what}: after /{master} comes at most /DB (a number)")
        if len(parts) == 2:
            if not parts[1].isdigit():
                raise ValueError(f"{what}: the database {parts[1]!r} is not a number")
            db = int(parts[1])
        options: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            if key not in _SENTINEL_OPTIONS:
                known = ", ".join(sorted(_SENTINEL_OPTIONS))
                raise ValueError(f"{what}: the option {key!r} is not one of {known}")
            options[key] = value
        return cls(
            what.removeprefix("Redis URL ").strip("'"),
            db,
            sentinels=sentinels,
            master=master,
            username=username,
            password=password,
            sentinel_username=options.get("sentinel_username"),
            sentinel_password=options.get("sentinel_password"),
        )


def _parse_sentinels(text: str, what: str) -> tuple[SentinelAddress, ...]:
    if not text:
        raise ValueError(f"{what}: no Sentinel address before the master's name")
    found: list[SentinelAddress] = []
    for part in text.split(","):
        if not part:
            raise ValueError(f"{what}: an empty Sentinel address in {text!r}")
        if part.startswith("["):
            host, bracket, rest = part[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{what}: the Sentinel address {part!r}: write [v6addr]:port")
            port_text = rest[1:]
        else:
            host, _, port_text = part.partition(":")
        if not host:
            raise ValueError(f"{what}: the Sentinel address {part!r} has no host")
        if port_text and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
            raise ValueError(f"{what}: the port {port_text!r} of Sentinel {host!r} is not 1-65535")
        address = SentinelAddress(host, int(port_text) if port_text else SENTINEL_PORT)
        if address in found:
            raise ValueError(f"{what}: the Sentinel {address} is listed twice")
        found.append(address)
    return tuple(found)


def _masked(url: str) -> str:
    """The URL with passwords replaced by ``***`` (user info and ``sentinel_password``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:***@{hosts}"
    path, question, query = path.partition("?")
    if question:
        pairs = [
            f"{k}=***" if k == "sentinel_password" else f"{k}={v}"
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        path = f"{path}?{'&'.join(pairs)}"
    return f"{scheme}://{authority}{slash}{path}"
